"""`python -m sweep.colorize MODEL INPUT... -o OUT [--saturation 0.7 --hue 0.6] [--strip saturation=0.1:0.9:5]`.

MODEL is an exported generator file (`generator.pt`) or a checkpoint folder. Inputs may be color
(only their L channel is used) or grayscale, of any size; folders are searched with their subfolders.
`--scale train` (the default) predicts at the training size and upsamples ab onto the full L;
`--scale native` runs the net on the full image (trainable/colorizer.py says why). A conditioned model takes one flag per statistic it was trained
on (unspecified = free); `--strip` writes one PNG per input, or one for all with an OUT ending in
.png, with a column per value. All inputs and flags are checked before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from trainable.colorizer import (SCALES, ColorModel, TargetError, check_targets, colorize_many, colorize_variants,
                                 load_model, strip_image)
from trainable.config import CONTROL_NAMES
from trainable.export import ModelError
from trainable.files import folder_problem, is_image_name, write_png


class InputError(ValueError):
    pass


def parse_strip(text: str) -> tuple[str, list[float]]:
    """'saturation=0.1:0.9:5' → ('saturation', [0.1, 0.3, 0.5, 0.7, 0.9])."""
    name, _, spec = text.partition("=")
    parts = spec.split(":")
    try:
        low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        raise InputError(f"--strip {text}: expected STATISTIC=LOW:HIGH:COUNT, e.g. saturation=0.1:0.9:5") from None
    if name not in CONTROL_NAMES or count < 2 or len(parts) != 3:
        raise InputError(f"--strip {text}: expected one of {', '.join(CONTROL_NAMES)} and COUNT >= 2")
    return name, [float(v) for v in np.linspace(low, high, count)]


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of different widths, padded white on the right, one above the other."""
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded, axis=0)


def collect_inputs(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """(image file, its output name relative to OUT): a folder's images keep their subfolders."""
    files: list[tuple[Path, Path]] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
            if not found:
                raise InputError(f"{path}: folder holds no images")
            files.extend((p, p.relative_to(path).with_suffix(".png")) for p in found)
        elif path.exists():
            files.append((path, Path(path.stem + ".png")))
        else:
            raise InputError(f"{path}: no such file")
    return files


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not an image ({type(err).__name__})") from None


def output_paths(files: list[tuple[Path, Path]], out: Path, one_file: bool) -> list[Path]:
    if one_file and out.suffix.lower() == ".png":
        return [out]
    if out.suffix and not out.is_dir():
        if one_file:
            raise InputError(f"{out}: the output is a PNG image; end its name in .png, or give a folder")
        raise InputError(f"{out}: several inputs need an output folder, not a file")
    names = [name for _, name in files]
    if len(set(names)) != len(names):
        raise InputError("two inputs share a name; their outputs would overwrite each other")
    return [out / name for name in names]


def check_writable(outputs: Sequence[Path], flag: str) -> None:
    """Every folder the outputs go to can be made and written, checked before any image is colorized."""
    for folder in sorted({path.parent for path in outputs}):
        problem = folder_problem(folder)
        if problem:
            raise InputError(f"-o {flag}: {problem}")


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device; cpu or cuda") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep.colorize", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="exported generator file or checkpoint folder")
    parser.add_argument("inputs", nargs="+", help="image files or folders (searched with their subfolders)")
    parser.add_argument("-o", "--output", required=True, help="output .png (one input, or one strip) or folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--scale", choices=SCALES, default="train",
                        help="train: predict at the training image size and upsample ab (default); native: full size")
    for name in CONTROL_NAMES:
        parser.add_argument(f"--{name}", type=float, metavar="σ",
                            help=f"target {name}" + (" in turns" if name == "hue" else "") + " (conditioned models)")
    parser.add_argument("--strip", metavar="STAT=LOW:HIGH:COUNT",
                        help="one PNG with a column per value of STAT, e.g. saturation=0.1:0.9:5")
    return parser


def _run(args: argparse.Namespace, model: ColorModel, files: list, images: list, strip) -> None:
    targets = {n: getattr(args, n) for n in CONTROL_NAMES if getattr(args, n) is not None}
    if strip is None:
        outputs = output_paths(files, Path(args.output), len(files) == 1)
        for colored, target in zip(colorize_many(model, images, targets, args.scale), outputs):
            write_png(colored, target)
            print(f"wrote {target}")
        return
    name, values = strip
    rows = [strip_image(colorize_variants(model, image, [{**targets, name: v} for v in values], args.scale))
            for image in images]
    outputs = output_paths(files, Path(args.output), True)
    if len(outputs) == 1:
        rows = [stack_rows(rows)]
    for row, target in zip(rows, outputs):
        write_png(row, target)
        print(f"wrote {target} (columns: {name} = {', '.join(f'{v:g}' for v in values)})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        strip = parse_strip(args.strip) if args.strip else None
        if strip and getattr(args, strip[0]) is not None:
            raise InputError(f"--strip {strip[0]} and --{strip[0]} both set; give one")
        model = load_model(args.model, check_device(args.device))
        wanted = {n: getattr(args, n) for n in CONTROL_NAMES if getattr(args, n) is not None}
        asked = [{**wanted, strip[0]: v} for v in strip[1]] if strip else [wanted]
        warnings = list(dict.fromkeys(w for targets in asked for w in check_targets(model, targets)))
        files = collect_inputs(args.inputs)
        images = [read_image(path) for path, _ in files]          # every input checked before any write
        check_writable(output_paths(files, Path(args.output), len(files) == 1 or strip is not None), args.output)
    except (ModelError, InputError, TargetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(model.describe())
    for warning in warnings:
        print(warning, file=sys.stderr)
    print(f"scale: {args.scale}" + (f" (short side at the training size, {model.cfg.data.image_size} px)"
                                    if args.scale == "train" else " (full resolution)"))
    try:
        _run(args, model, files, images, strip)
    except OSError as err:        # the disk filled or the folder went away since the check: no traceback
        print(f"error: {err.filename or args.output}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
