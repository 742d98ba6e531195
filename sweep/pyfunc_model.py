"""The file MLflow loads a registered colorsweep model from ("models from code": no pickle)."""
import mlflow

from sweep.serving import ColorizerModel

mlflow.models.set_model(ColorizerModel())
