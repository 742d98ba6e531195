"""Raw image sets as uint8 (N, H, W, 3) RGB numpy arrays: cifar10, npz, folder and synthetic.

`load_raw(cfg, split)` picks the loader named by `cfg.dataset`. Only cifar10 has a separate test
split; the others have one set of images, which data.py splits into train and validation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainable.cifar10 import load_cifar10, read_npz_images
from trainable.config import DataConfig
from trainable.download import DataError
from trainable.files import IMAGE_SUFFIXES, is_image_name
from trainable.images import UNREADABLE, square_rgb

SYNTHETIC_CHUNK_PIXELS = 1 << 20  # pixels generated at once; bounds the float scratch memory
SYNTHETIC_SHAPES = 4          # blobs / disks / squares drawn over each gradient
SYNTHETIC_GRAY_EVERY = 8      # every 8th synthetic image is made gray, to exercise the gray filter


def has_test_split(cfg: DataConfig) -> bool:
    """Whether the dataset has its own test split (cifar10 only)."""
    return cfg.dataset == "cifar10"


def _check_size(images: np.ndarray, size: int, where: str) -> np.ndarray:
    if images.shape[1:3] != (size, size):
        raise DataError(f"data.image_size: is {size} but the images in {where} are "
                        f"{images.shape[1]}x{images.shape[2]}")
    return images


def _existing(path: str, dataset: str, folder: bool, wanted: str) -> Path:
    """data.path as a Path to an existing file (or folder); otherwise one line saying what to set."""
    if not path:
        raise DataError(f"data.path: empty; set it to {wanted}")
    given = Path(path).expanduser()
    if not (given.is_dir() if folder else given.is_file()):
        kind = "folder" if folder else "file"
        raise DataError(f"{given}: no such {kind} (data.path for data.dataset={dataset})")
    return given


def load_npz(path: str, size: int) -> np.ndarray:
    """One .npz file's uint8 NHWC `images`, which must be size×size."""
    file = _existing(path, "npz", False, "an .npz file with uint8 NHWC 'images'")
    return _check_size(read_npz_images(file), size, str(file))


def _fit_square(file: Path, size: int) -> np.ndarray:
    """Open an image as RGB (any mode, see trainable.images), resize its shorter side to size and
    crop the center square."""
    try:
        return square_rgb(file.read_bytes(), size)
    except UNREADABLE as err:
        raise DataError(f"{file}: not a readable image ({err})") from None


def load_folder(path: str, size: int) -> np.ndarray:
    """Every image file under path (recursive, sorted by path), as size×size center crops."""
    root = _existing(path, "folder", True, "a folder of images")
    files = sorted(p for p in root.rglob("*") if is_image_name(p) and p.is_file())
    if not files:
        raise DataError(f"{root}: holds no images ({'/'.join(sorted(IMAGE_SUFFIXES))})")
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for index, file in enumerate(files):
        images[index] = _fit_square(file, size)
    return images


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorized HSV (all in [0, 1]) → RGB in [0, 1], shape (..., 3)."""
    sector = np.floor(hue * 6).astype(np.int64) % 6
    fraction = hue * 6 - np.floor(hue * 6)
    p = value * (1 - saturation)
    q = value * (1 - fraction * saturation)
    t = value * (1 - (1 - fraction) * saturation)
    red = np.choose(sector, [value, q, p, p, t, value])
    green = np.choose(sector, [t, value, value, q, p, p])
    blue = np.choose(sector, [p, p, t, value, value, q])
    return np.stack([red, green, blue], axis=-1)


def _random_colors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # saturation and value ≥ 0.35 keep every colored image well above the gray-filter threshold
    return _hsv_to_rgb(rng.random(shape), rng.uniform(0.35, 1.0, shape), rng.uniform(0.35, 1.0, shape))


def _synthetic_chunk(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """count float images (count, size, size, 3): a two-color gradient, then soft shapes over it."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    y, x = np.meshgrid(axis, axis, indexing="ij")                       # (H, W), in [-0.5, 0.5]
    angle = rng.uniform(0, 2 * np.pi, count)[:, None, None]
    cos, sin = np.cos(angle), np.sin(angle)
    ramp = np.clip((cos * x + sin * y) / (np.abs(cos) + np.abs(sin)) + 0.5, 0, 1)[..., None]
    ends = _random_colors(rng, (count, 2))[:, :, None, None, :]         # (N, 2, 1, 1, 3)
    images = ends[:, 0] * (1 - ramp) + ends[:, 1] * ramp
    centers = rng.uniform(-0.4, 0.4, (count, SYNTHETIC_SHAPES, 2, 1, 1))
    radii = rng.uniform(0.06, 0.3, (count, SYNTHETIC_SHAPES, 1, 1))
    kinds = rng.integers(0, 3, (count, SYNTHETIC_SHAPES, 1, 1))
    colors = _random_colors(rng, (count, SYNTHETIC_SHAPES))
    dy, dx = y - centers[:, :, 0], x - centers[:, :, 1]                  # (N, K, H, W)
    blob = np.exp(-(dx ** 2 + dy ** 2) / (2 * (radii / 2) ** 2))
    disk = np.clip((radii - np.sqrt(dx ** 2 + dy ** 2)) * size, 0, 1)
    square = np.clip((radii - np.maximum(np.abs(dx), np.abs(dy))) * size, 0, 1)
    alpha = np.choose(kinds, [blob, disk, square])[..., None]          # (N, K, H, W, 1)
    for shape in range(SYNTHETIC_SHAPES):
        images = images * (1 - alpha[:, shape]) + colors[:, shape, None, None, :] * alpha[:, shape]
    return images


def make_synthetic(count: int, size: int, seed: int) -> np.ndarray:
    """count procedural color images, deterministic for (count, size, seed); every
    SYNTHETIC_GRAY_EVERY-th one (index 7, 15, …) is pure gray."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    chunk = max(1, SYNTHETIC_CHUNK_PIXELS // (size * size))
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        images[start:stop] = np.round(_synthetic_chunk(rng, stop - start, size) * 255)
    gray = np.arange(count) % SYNTHETIC_GRAY_EVERY == SYNTHETIC_GRAY_EVERY - 1
    luma = images[gray].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    images[gray] = np.round(luma).astype(np.uint8)[..., None]
    return images


def load_raw(cfg: DataConfig, split: str = "train") -> np.ndarray:
    """The uint8 NHWC RGB images of cfg.dataset; split "test" exists only for cifar10."""
    if split != "train" and not has_test_split(cfg):
        raise DataError(f"data.dataset: {cfg.dataset} has no {split} split")
    if cfg.dataset == "cifar10":
        images = load_cifar10(cfg.path, split, cfg.download)
        return _check_size(images, cfg.image_size, cfg.path)
    if cfg.dataset == "npz":
        return load_npz(cfg.path, cfg.image_size)
    if cfg.dataset == "folder":
        return load_folder(cfg.path, cfg.image_size)
    if cfg.dataset == "synthetic":
        return make_synthetic(cfg.synthetic_size, cfg.image_size, cfg.split_seed)
    if cfg.dataset == "shards":
        raise DataError(f"{cfg.path}: data.dataset=shards is streamed (trainable.source.open_source), never read whole")
    raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}")
