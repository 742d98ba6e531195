"""`python -m sweep.colorize MODEL INPUT... -o OUT [--saturation 0.7 --hue 0.6] [--strip saturation=0.1:0.9:5]`.

MODEL is an exported generator file (`generator.pt`) or a checkpoint folder. Inputs may be color
(only their L channel is used) or grayscale, of any size; folders are searched with their subfolders.
By default (`--scale train`) ab is predicted on the L channel downscaled so its short side is the
training image size (aspect kept) and upsampled bilinearly onto the full-resolution L (Zhang et al.
2016): a model keeps its control at the scale it learned it. `--scale native` runs the fully
convolutional net on the full image. A conditioned model takes one flag per statistic it was trained
on (unspecified = free); `--strip` writes one PNG per input, or one for all with an OUT ending in
.png, with a column per value. All inputs and flags are checked before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from trainable.color import lab_normalized_to_uint8, rgb_to_lab_normalized
from trainable.condition import condition_vector, fixed_targets
from trainable.config import CONTROL_NAMES, Config
from trainable.export import ModelError, load_generator
from trainable.files import folder_problem, is_image_name, write_atomic

SCALES = ("train", "native")
BATCH = 16


class InputError(ValueError):
    pass


class TargetError(ValueError):
    """Targets the model cannot take; the message names the statistic and what the model accepts."""


@dataclass(frozen=True)
class ColorModel:
    """A loaded generator with what colorizing needs: its config and its conditioned ranges."""
    generator: torch.nn.Module
    cfg: Config
    ranges: dict[str, tuple[float, float]]

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def describe(self) -> str:
        if self.ranges:
            return "model inputs: " + ", ".join(f"{n} in [{lo:g}, {hi:g}]" + (" (turns, circular)" if n == "hue" else "")
                                                for n, (lo, hi) in self.ranges.items())
        fixed = ", ".join(f"{n} {c.target:g} (λ={c.weight:g})" for n, c in self.cfg.loss.controlled().items())
        return f"model trained for: {fixed or 'no controlled statistic'} (takes no targets)"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ColorModel:
    generator, cfg, _ = load_generator(path, device)
    return ColorModel(generator, cfg, {n: tuple(c.range) for n, c in cfg.loss.conditioned().items()})


def check_targets(model: ColorModel, targets: Mapping[str, float | None] | None) -> list[str]:
    """Raise TargetError for a statistic the model does not take; return warnings for values outside
    the training range (they run anyway)."""
    warnings = []
    for name, value in (targets or {}).items():
        if value is None:
            continue
        if name not in model.ranges:
            accepts = ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in model.ranges.items())
            why = f"accepts {accepts}" if accepts else "is unconditioned and takes no targets"
            raise TargetError(f"--{name}: this model was not trained with {name} as an input; it {why}")
        low, high = model.ranges[name]
        if not low <= value <= high:
            warnings.append(f"warning: --{name} {value:g} is outside the training range [{low:g}, {high:g}]; running anyway")
    return warnings


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side at `short_side`, aspect kept."""
    factor = short_side / min(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


@torch.no_grad()
def predict_ab(model: ColorModel, gray: torch.Tensor, condition: torch.Tensor | None, scale: str) -> torch.Tensor:
    """Normalized L (N,1,H,W) → normalized ab (N,2,H,W); at `train` scale predicted on L resized to
    the training size and upsampled bilinearly. The net wants sizes that are multiples of half the
    training size: the input is padded (replicate) and the output cropped back."""
    height, width = gray.shape[-2:]
    size = model.cfg.data.image_size
    work = gray
    if scale == "train":
        work = F.interpolate(gray, working_size(height, width, size), mode="bilinear", antialias=True,
                             align_corners=False)
    multiple = size // 2
    h, w = work.shape[-2:]
    padded = F.pad(work, (0, -w % multiple, 0, -h % multiple), mode="replicate")
    ab = model.generator(padded, condition) if model.ranges else model.generator(padded)
    ab = ab[..., :h, :w].float()
    if (h, w) != (height, width):
        ab = F.interpolate(ab, (height, width), mode="bilinear", align_corners=False)
    return ab


def _condition(model: ColorModel, targets: Sequence[Mapping[str, float | None] | None]) -> torch.Tensor | None:
    if not model.ranges:
        return None
    vectors = [condition_vector(fixed_targets({n: (t or {}).get(n) for n in model.ranges}, 1, model.device))
               for t in targets]
    return torch.cat(vectors)


def _gray(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)
    return rgb_to_lab_normalized(image)[:, :1]


def colorize_array(model: ColorModel, rgb: np.ndarray, targets: Mapping[str, float | None] | None = None,
                   scale: str = "train") -> np.ndarray:
    """uint8 HWC RGB (or gray L channel source) → uint8 HWC RGB colorized from its L channel with
    `targets` ({statistic: value}, missing or None = free). Raises TargetError for targets the model
    does not take (check_targets)."""
    return colorize_variants(model, rgb, [targets], scale)[0]


def colorize_variants(model: ColorModel, rgb: np.ndarray, targets: Sequence[Mapping[str, float | None] | None],
                      scale: str = "train") -> list[np.ndarray]:
    """One image colorized once per target set, in batches."""
    for wanted in targets:
        check_targets(model, wanted)
    gray = _gray(rgb, model.device)
    out = []
    for start in range(0, len(targets), BATCH):
        chunk = targets[start:start + BATCH]
        batch = gray.expand(len(chunk), -1, -1, -1)
        ab = predict_ab(model, batch, _condition(model, chunk), scale)
        out.extend(lab_normalized_to_uint8(torch.cat([batch, ab], 1)))
    return out


def colorize_many(model: ColorModel, images: Sequence[np.ndarray], targets: Mapping[str, float | None] | None,
                  scale: str = "train") -> list[np.ndarray]:
    """Many images with the same targets; images of one size run as one batch."""
    check_targets(model, targets)
    out: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape[:2], []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            gray = torch.cat([_gray(images[i], model.device) for i in chunk])
            ab = predict_ab(model, gray, _condition(model, [targets] * len(chunk)), scale)
            for i, colored in zip(chunk, lab_normalized_to_uint8(torch.cat([gray, ab], 1))):
                out[i] = colored
    return out


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


def strip_image(columns: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(columns, axis=1)


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


def write_png(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"))


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
