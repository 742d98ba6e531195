"""A trained generator as an MLflow pyfunc model: images in, colorized images out, targets as params.

Input: a DataFrame (or dict) with one column `image` holding uint8 H×W×3 or H×W arrays, or base64
PNG/JPEG strings (the REST form); the output has the same column, each image in the form it came
in. Params: one per statistic of CONTROL_NAMES (None = free) and `scale` (`train` or `native`), the
same as `python -m sweep.colorize`'s flags, and the colorizing is that module's `colorize_many`.
The signature lists every statistic, not only the model's, because MLflow drops params missing
from the signature before `predict` sees them: a target the model does not take must reach it to
be refused. The model's own ranges are in the MLmodel metadata (`colorsweep`). Bad input raises
MlflowException(INVALID_PARAMETER_VALUE), which the scoring server answers with HTTP 400.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Mapping, Sequence

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image, UnidentifiedImageError

from trainable.colorizer import SCALES, ColorModel, TargetError, check_targets, colorize_many, load_model
from trainable.config import CONTROL_NAMES

COLUMN = "image"
GENERATOR = "generator"     # the artifact key of generator.pt


def signature() -> ModelSignature:
    params = [ParamSpec(name, "double", None) for name in CONTROL_NAMES]
    params.append(ParamSpec("scale", "string", "train"))
    images = Schema([ColSpec(AnyType(), COLUMN)])
    return ModelSignature(inputs=images, outputs=images, params=ParamSchema(params))


def input_example() -> pd.DataFrame:
    """One small gray PNG, so the logged model shows the REST form (serving_input_example.json)."""
    gray = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    return pd.DataFrame({COLUMN: [encode_png(gray)]})


def describe(model: ColorModel) -> dict:
    """What a caller needs to know: the statistics it may set and their ranges, or the fixed targets."""
    fixed = {name: c.target for name, c in model.cfg.loss.controlled().items()}
    return {"ranges": {name: list(bounds) for name, bounds in model.ranges.items()},
            "fixed_targets": fixed, "image_size": model.cfg.data.image_size, "summary": model.describe()}


def bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def decode_image(text: str, index: int) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_input(f"image {index}: not base64 text") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise bad_input(f"image {index}: not a PNG or JPEG image ({type(err).__name__})") from None


def encode_png(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def as_rgb(array: np.ndarray, index: int) -> np.ndarray:
    """uint8 H×W or H×W×3 → H×W×3 (gray repeated, as PIL's convert("RGB") does)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise bad_input(f"image {index}: expected a uint8 H×W or H×W×3 array, got {array.dtype} "
                        f"of shape {array.shape}")
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def targets_from(params: Mapping[str, object] | None) -> tuple[dict[str, float], str]:
    """({statistic: target} without the free ones, scale) from the request's params."""
    params = dict(params or {})
    scale = params.pop("scale", None) or "train"
    if scale not in SCALES:
        raise bad_input(f"scale: {scale!r} is not one of {', '.join(SCALES)}")
    return {name: float(value) for name, value in params.items() if value is not None}, scale


def read_column(images: Sequence) -> list[np.ndarray]:
    """Every image decoded and checked before any is colorized."""
    rgbs = []
    for index, item in enumerate(images):
        if isinstance(item, str):
            rgbs.append(decode_image(item, index))
        elif isinstance(item, np.ndarray):
            rgbs.append(as_rgb(item, index))
        else:
            raise bad_input(f"image {index}: expected a base64 PNG string or a uint8 array, "
                            f"got {type(item).__name__}")
    return rgbs


def colorize_column(model: ColorModel, images: Sequence, targets: Mapping[str, float], scale: str) -> list:
    """sweep.colorize's colorize_many (the CLI's call); each image answered in the form it came in."""
    colored = colorize_many(model, read_column(images), targets, scale)
    return [encode_png(rgb) if isinstance(item, str) else rgb for item, rgb in zip(images, colored)]


class ColorizerModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: `load_context` reads the generator artifact with sweep.colorize's loader."""

    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts[GENERATOR])

    # pd.DataFrame is a hint MLflow infers no schema from: our signature stays the one we log
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        targets, scale = targets_from(params)
        try:
            for warning in check_targets(self.model, targets):     # outside the training range: runs
                logging.getLogger(__name__).warning(warning)
        except TargetError as err:
            raise bad_input(str(err).removeprefix("--")) from None
        if isinstance(model_input, pd.DataFrame):
            images = model_input[COLUMN].tolist() if COLUMN in model_input else None
        else:
            images = model_input.get(COLUMN) if isinstance(model_input, Mapping) else None
        if images is None:
            raise bad_input(f"input: expected a column named {COLUMN!r} of images")
        if len(images) == 1 and isinstance(images[0], (list, tuple)):
            images = images[0]      # MLflow makes {"image": [...]} (REST "inputs") one row holding the list
        return pd.DataFrame({COLUMN: colorize_column(self.model, list(images), targets, scale)})
