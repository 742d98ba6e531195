"""`python -m sweep.colorize MODEL INPUT... -o OUT`: colorize images with a trained generator.

MODEL is an exported generator file (`generator.pt`) or a checkpoint folder. Inputs may be color
(only their L channel is used) or grayscale, of any size: the net is fully convolutional, so each
image is padded to the net's multiple and cropped back. One input and an OUT ending in .png writes
that file; otherwise OUT is a folder receiving `<name>.png` per input. All inputs are checked before
anything is written, and every PNG is written to a temp name and renamed.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from trainable.color import lab_normalized_to_uint8, rgb_to_lab_normalized
from trainable.export import ModelError, load_generator
from trainable.files import is_image_name, write_atomic



class InputError(ValueError):
    pass


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if is_image_name(p))
            if not found:
                raise InputError(f"{path}: folder holds no images")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file")
    return files


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not an image ({type(err).__name__})") from None


@torch.no_grad()
def colorize_array(generator: torch.nn.Module, rgb: np.ndarray, multiple: int) -> np.ndarray:
    """uint8 HWC RGB → uint8 HWC RGB colorized from its L channel."""
    device = next(generator.parameters()).device
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(device)
    gray = rgb_to_lab_normalized(image)[:, :1]
    height, width = gray.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    padded = F.pad(gray, (0, pad_w, 0, pad_h), mode="replicate")
    ab = generator(padded)[..., :height, :width]
    return lab_normalized_to_uint8(torch.cat([gray, ab], 1))[0]


def write_png(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"))


def output_paths(files: list[Path], out: Path) -> list[Path]:
    if len(files) == 1 and out.suffix.lower() == ".png":
        return [out]
    if out.suffix and not out.is_dir():
        raise InputError(f"{out}: several inputs need an output folder, not a file")
    names = [f.stem + ".png" for f in files]
    if len(set(names)) != len(names):
        raise InputError("two inputs share a name; their outputs would overwrite each other")
    return [out / name for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.colorize", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="exported generator file or checkpoint folder")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, help="output .png (one input) or folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    try:
        generator, cfg, targets = load_generator(args.model, args.device)
        files = collect_inputs(args.inputs)
        images = [read_image(f) for f in files]          # every input checked before any write
        outputs = output_paths(files, Path(args.output))
    except (ModelError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    wanted = ", ".join(f"{n} {t['target']:g} (λ={t['weight']:g})" for n, t in targets.items())
    print(f"model trained for: {wanted or 'no controlled statistic'}")
    multiple = cfg.data.image_size // 2
    for image, target in zip(images, outputs):
        write_png(colorize_array(generator, image, multiple), target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
