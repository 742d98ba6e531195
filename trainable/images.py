"""One image file's bytes → RGB at a size: every mode a photo folder holds made plain 8-bit RGB.

CMYK and palette images are converted, grayscale is repeated into three channels, alpha is laid over
white (dropping it would show whatever color the transparent pixels happen to hold), 16-bit gray is
scaled to 8 bits (PIL's own conversion clips it at 255), and EXIF orientation is applied.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """A loaded image of any mode as 8-bit RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        wide = image.mode.startswith("I;16") or values.max(initial=0) > 255
        values = np.clip(np.round(values / 257 if wide else values), 0, 255).astype(np.uint8)
        return Image.fromarray(values).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to size (bicubic) and crop the center size×size square."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))


def open_image(data: bytes, size: int) -> Image.Image:
    """Encoded bytes → opened image; a JPEG is decoded at the smallest 1/2^k scale still ≥ size."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft(None, (size, size))
    image.load()
    return image


def square_rgb(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes → uint8 (size, size, 3) RGB; raises one of UNREADABLE if not an image."""
    return np.asarray(fit_square(to_rgb(open_image(data, size)), size))
