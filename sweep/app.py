"""`python -m sweep.app MODEL [--port P] [--share]`: a Gradio page to colorize images by hand.

MODEL is an exported `generator.pt`, a checkpoint folder or `models:/NAME/VERSION` (read from the
MLflow store of `--mlflow-uri` or MLFLOW_TRACKING_URI). The page: upload a grayscale image or pick an
example, one slider per statistic the model was conditioned on (its training range) with a "free"
box, the result beside the input, a strip across the range of the chosen statistic, a PNG to
download. A fixed-target model shows its targets and has no sliders. Colorizing is
sweep.colorize's. The page listens on 127.0.0.1 only; `--share` asks Gradio for a public link.
Needs the `app` extra: `pip install -e '.[app]'`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from trainable.colorizer import SCALES, ColorModel, colorize_array, colorize_variants, load_model, strip_image
from trainable.export import ModelError

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
STRIP_POINTS = 5
IMAGE_HEIGHT = 280     # display pixels; small examples are scaled up to it


def open_model(ref: str, tracking_uri: str | None = None) -> ColorModel:
    """A generator file or checkpoint folder, or a registered model (its pyfunc's loaded generator)."""
    if not ref.startswith("models:/"):
        return load_model(ref)
    import mlflow
    from mlflow.exceptions import MlflowException
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=ref, tracking_uri=tracking_uri)
        return mlflow.pyfunc.load_model(local).unwrap_python_model().model
    except (MlflowException, OSError) as err:
        raise ModelError(f"{ref}: {str(err).splitlines()[0]}") from None


def targets_of(model: ColorModel, values: Sequence) -> dict[str, float | None]:
    """Slider values then free boxes, in the order of model.ranges → {statistic: target or None}."""
    names = list(model.ranges)
    sliders, free = values[:len(names)], values[len(names):]
    return {name: None if is_free else float(value) for name, value, is_free in zip(names, sliders, free)}


def strip_targets(model: ColorModel, targets: dict, name: str) -> list[dict]:
    low, high = model.ranges[name]
    return [{**targets, name: float(v)} for v in np.linspace(low, high, STRIP_POINTS)]


_DOWNLOADS = tempfile.TemporaryDirectory(prefix="colorsweep-app-")   # removed when the page stops


def write_download(image: np.ndarray) -> str:
    """The PNG offered for download; Gradio copies it into its cache, ours goes at exit."""
    handle, path = tempfile.mkstemp(prefix="colorized-", suffix=".png", dir=_DOWNLOADS.name)
    with os.fdopen(handle, "wb") as out:
        Image.fromarray(image).save(out, format="PNG")
    return path


def colorize_page(model: ColorModel, image: np.ndarray | None, scale: str, strip_name: str | None, *values):
    """The page's one action → (colorized image, strip or None, PNG path to download)."""
    if image is None:
        return None, None, None
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    targets = targets_of(model, values)
    colored = colorize_array(model, rgb, targets, scale)
    strip = None
    if strip_name in model.ranges:
        strip = strip_image(colorize_variants(model, rgb, strip_targets(model, targets, strip_name), scale))
    return colored, strip, write_download(colored)


def build_app(model: ColorModel, examples: Sequence[Path] = ()):
    import gradio as gr

    with gr.Blocks(title="colorsweep") as page:
        gr.Markdown(f"## colorsweep colorizer\n{model.describe()}")
        with gr.Row():
            first = str(examples[0]) if examples else None
            source = gr.Image(first, type="numpy", image_mode="RGB", label="grayscale image",
                              sources=["upload", "clipboard"], height=IMAGE_HEIGHT)
            result = gr.Image(type="numpy", format="png", label="colorized", interactive=False, height=IMAGE_HEIGHT)
        sliders, frees = [], []
        for name, (low, high) in model.ranges.items():
            with gr.Row():
                sliders.append(gr.Slider(low, high, value=round((low + high) / 2, 2), step=0.01, label=name, scale=4))
                frees.append(gr.Checkbox(value=False, label=f"{name} free", scale=1))
        if not model.ranges:
            fixed = {n: c.target for n, c in model.cfg.loss.controlled().items()}
            gr.JSON(value=fixed, label="fixed targets (the model was trained for them; not editable)")
        with gr.Row():
            scale = gr.Radio(list(SCALES), value="train", label="scale")
            strip_name = gr.Dropdown(list(model.ranges), value=next(iter(model.ranges), None),
                                     label="strip across", visible=bool(model.ranges))
        strip = gr.Image(type="numpy", format="png", label=f"strip ({STRIP_POINTS} values across the range)",
                         interactive=False, visible=bool(model.ranges), height=IMAGE_HEIGHT // 2)
        with gr.Row():
            run = gr.Button("Colorize", variant="primary")
            download = gr.DownloadButton("Download PNG")
        if examples:
            gr.Examples([[str(p)] for p in examples], inputs=[source])
        inputs = [source, scale, strip_name, *sliders, *frees]
        outputs = [result, strip, download]
        action = lambda *args: colorize_page(model, *args)   # noqa: E731 (Gradio wants a callable)
        run.click(action, inputs, outputs, api_name="colorize")
        page.load(action, inputs, outputs, api_visibility="private")     # opens with the first example done
        for control in [source, scale, strip_name, *frees]:
            control.change(action, inputs, outputs, api_visibility="private")
        for slider in sliders:
            slider.release(action, inputs, outputs, api_visibility="private")
    return page


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep.app", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="generator.pt, checkpoint folder, or models:/NAME/VERSION")
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    parser.add_argument("--share", action="store_true", help="also ask Gradio for a public share link")
    parser.add_argument("--mlflow-uri", default=None, help="tracking store for models:/ (default: MLflow's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a port number")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the page needs Gradio: pip install -e '.[app]'", file=sys.stderr)
        return 2
    try:
        model = open_model(args.model, args.mlflow_uri)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(model.describe())
    examples = sorted(EXAMPLES.glob("*.png")) if EXAMPLES.is_dir() else []
    page = build_app(model, examples)
    # quiet: Gradio's hint names its argument share=True; this prints the CLI's flag instead
    page.launch(server_name="127.0.0.1", server_port=args.port, share=args.share, quiet=True,
                prevent_thread_lock=True)
    where = "" if args.share else " (this machine only; --share adds a public link)"
    print(f"page: {page.local_url}{where}", flush=True)
    page.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
