"""`python -m sweep.register MODEL --name NAME [--mlflow-uri URI]`: log an exported generator as an
MLflow pyfunc model (sweep.serving) and register it as a new version of NAME in the Model Registry.

MODEL is an exported `generator.pt` (or a checkpoint's `latest.pt`). Without a run to log into, a
run tagged colorsweep.role=registered is made in the experiment named NAME (created if missing);
`sweep.final` logs into its final run instead. The MLflow writes are `analysis.tracking`'s.
Serve a version with `mlflow models serve -m models:/NAME/VERSION --env-manager local`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy
import PIL
import torch
from mlflow.exceptions import MlflowException

from analysis import tracking
from analysis.store import StoreError, resolve_tracking_uri
from trainable.colorizer import load_model
from sweep.serving import GENERATOR, describe, input_example, signature
from trainable.export import ModelError

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")   # models from code: MLflow stores no pickle


def requirements() -> list[str]:
    """Pinned to this environment; given explicitly so MLflow does not load the model to infer them.
    The model imports the colorsweep package (sweep.serving), which must be installed where it runs."""
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={numpy.__version__}", f"pillow=={PIL.__version__}"]


def save_pyfunc(generator: Path, folder: Path) -> dict:
    """The pyfunc model folder (MLmodel, signature, the generator as its artifact); returns its metadata."""
    info = describe(load_model(generator))
    mlflow.pyfunc.save_model(path=str(folder), python_model=str(MODEL_CODE), input_example=input_example(),
                             artifacts={GENERATOR: str(generator)}, signature=signature(),
                             pip_requirements=requirements(), metadata={"colorsweep": info})
    return info


def register(generator: str | Path, name: str, tracking_uri: str | None = None,
             run_id: str | None = None) -> tuple[str, str]:
    """Log `generator` as a pyfunc model under `model/` of `run_id` (a new run when None) and
    register it as a new version of `name` → (version, models:/ URI). A run that already has a
    version of `name` keeps it: a rerun of a finished final run registers nothing twice."""
    generator = Path(generator)
    if not generator.is_file():
        raise ModelError(f"{generator}: not a file; register takes an exported generator.pt")
    load_model(generator)              # a file that is no model fails here, before any store is made
    tracking_uri = resolve_tracking_uri(tracking_uri)       # a relative sqlite path made absolute
    done = run_id and tracking.registered_version(tracking_uri, name, run_id)
    if done:
        return done, f"models:/{name}/{done}"
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp) / tracking.MODEL_ARTIFACT
        info = save_pyfunc(generator, folder)
        version = tracking.log_model_version(tracking_uri, name, folder, run_id, generator, info["summary"])
    return version, f"models:/{name}/{version}"


def build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())     # the first paragraph, not its first line
    parser = argparse.ArgumentParser(prog="python -m sweep.register", description=summary)
    parser.add_argument("model", help="exported generator.pt")
    parser.add_argument("--name", required=True, help="registered model name (a new version each time)")
    parser.add_argument("--mlflow-uri", default=None, help="tracking store (default: MLflow's, MLFLOW_TRACKING_URI)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.name.strip() or "'" in args.name:
        parser.error("--name must not be empty or hold a quote (')")
    try:
        version, uri = register(args.model, args.name, args.mlflow_uri)
    except (ModelError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        print(f"error: MLflow: {err.message}", file=sys.stderr)
        return 1
    print(f"registered {args.model} as {uri}")
    print(f"serve it: mlflow models serve -m {uri} --env-manager local --host 127.0.0.1 --port 5001")
    return 0


if __name__ == "__main__":
    sys.exit(main())
