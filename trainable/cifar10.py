"""CIFAR-10 as uint8 NHWC RGB arrays, from whichever layout the data folder holds.

For each split ("train" or "test") the first of these found in the folder is used:
`<split>.npz` (uint8 NHWC `images`), the official pickled `cifar-10-batches-py/`, the official
`cifar-10-python.tar.gz` (extracted once next to itself), the JPEG mirror's `<split>/<class>/*.jpg`
tree, or the mirror's `cifar10-jpeg.tar.gz` read without extracting. Decoded JPEGs are cached as
`<split>.npz` when the folder is writable. With nothing there, `download=True` fetches the official
archive (MD5-checked); otherwise a DataError says where to put which files.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from trainable.download import DataError, download
from trainable.files import is_image_name, write_atomic

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_NAME = "cifar-10-batches-py"
JPEG_ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_npz_images(path: Path) -> np.ndarray:
    """The uint8 NHWC RGB `images` array of one .npz file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise DataError(f"{path}: no 'images' array (has: {', '.join(archive.files) or 'nothing'})")
            images = archive["images"]
    except (OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot read as .npz: {err}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: 'images' must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def _write_npz_atomic(path: Path, images: np.ndarray) -> None:
    """Cache decoded images as path; silently skipped when the folder is not writable."""
    try:
        write_atomic(path, lambda handle: np.savez(handle, images=images))
    except OSError:
        pass


def _batches_folder(root: Path) -> Path | None:
    for candidate in (root / BATCHES_NAME, root):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def _read_batches(folder: Path, split: str) -> np.ndarray:
    parts = []
    for name in BATCH_FILES[split]:
        path = folder / name
        try:
            # The official archive is a Python pickle; acceptable only for that archive (and the
            # MD5-checked download of it). Never point this at files from elsewhere.
            with path.open("rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            flat = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: not a CIFAR-10 python batch ({err})") from None
        parts.append(flat.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(parts))


def _safe_extract(tar: tarfile.TarFile, dest: Path, archive: Path) -> None:
    """extractall that refuses links, devices and paths leaving dest (tarfile's "data" filter)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():  # Python < 3.10.12 has no extraction filters
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or dest.resolve() not in target.parents:
            raise DataError(f"{archive}: refusing unsafe member {member.name!r}")
    tar.extractall(dest)


def _extract_archive(archive: Path, root: Path) -> None:
    """Unpack the official archive into root/cifar-10-batches-py (via a temp folder, then rename)."""
    try:
        with tempfile.TemporaryDirectory(prefix=".cifar-extract-", dir=root) as temp:
            with tarfile.open(archive, "r:gz") as tar:
                _safe_extract(tar, Path(temp), archive)
            extracted = Path(temp) / BATCHES_NAME
            if _batches_folder(extracted) is None:
                raise DataError(f"{archive}: holds no {BATCHES_NAME}/data_batch_1 … test_batch")
            os.replace(extracted, root / BATCHES_NAME)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: cannot extract into {root} ({err}); extract it there by hand") from None


def _decode(blobs: dict[str, bytes], where: Path) -> np.ndarray:
    """{name: encoded image} → (N, H, W, 3) uint8; a file that is no image is a DataError naming it."""
    arrays = []
    for name, blob in blobs.items():
        try:
            arrays.append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
        except (OSError, ValueError) as err:      # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"{where}/{name}: not a readable image ({err})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{where}: images of different sizes {sorted(shapes)[:3]}; use data.dataset=folder")
    return np.stack(arrays)


def _jpeg_tree(root: Path, split: str) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*/*") if is_image_name(p))


def _read_jpeg_tree(root: Path, split: str, files: list[Path]) -> np.ndarray:
    try:
        blobs = {str(p.relative_to(root / split)): p.read_bytes() for p in files}
    except OSError as err:
        raise DataError(f"{root / split}: cannot read its images ({err})") from None
    images = _decode(blobs, root / split)
    _write_npz_atomic(root / f"{split}.npz", images)
    return images


def _read_jpeg_archive(archive: Path, root: Path, split: str) -> np.ndarray:
    """Decode `<split>/<class>/*.jpg` straight from the mirror's tarball, in sorted name order."""
    blobs = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) >= 3 and parts[-3] == split \
                        and is_image_name(member.name):
                    blobs[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: cannot read: {err}") from None
    if not blobs:
        raise DataError(f"{archive}: holds no {split}/<class>/*.jpg images")
    images = _decode({name: blobs[name] for name in sorted(blobs)}, archive)
    _write_npz_atomic(root / f"{split}.npz", images)
    return images


def _root_of(path: str) -> Path:
    if not path:
        raise DataError(f"data.path: empty; set it to a CIFAR-10 folder (e.g. data.path=./dataset/cifar10)")
    given = Path(path).expanduser()
    if given.name.endswith(".tar.gz") and not given.is_dir():
        return given.parent
    return given


def _missing(root: Path) -> DataError:
    return DataError(f"{root}: no CIFAR-10 found; put {ARCHIVE_NAME} (or its {BATCHES_NAME}/), the JPEG "
                     f"mirror's {JPEG_ARCHIVE_NAME} (or its train/ and test/ class folders), or train.npz + "
                     f"test.npz with uint8 NHWC 'images' there, or set data.download=true to fetch {CIFAR10_URL}")


def _fetch_official(root: Path, url: str | None, md5: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    try:
        archive = download(url or CIFAR10_URL, root / ARCHIVE_NAME, md5 or CIFAR10_MD5)
    except DataError as err:   # offline, the other archive the reader takes is as good
        raise DataError(f"{err} (or put the JPEG mirror's {JPEG_ARCHIVE_NAME} there)") from None
    _extract_archive(archive, root)
    return root / BATCHES_NAME


def load_cifar10(path: str, split: str, download_missing: bool = False,
                 url: str | None = None, md5: str | None = None) -> np.ndarray:
    """CIFAR-10 `split` ("train" or "test") as uint8 (N, 32, 32, 3) RGB.

    path is the data folder, the `cifar-10-batches-py` folder itself, or the official archive
    file. url/md5 default to the official archive (read at call time, so tests can repoint them).
    """
    root = _root_of(path)
    if (root / f"{split}.npz").is_file():
        return read_npz_images(root / f"{split}.npz")
    batches = _batches_folder(root) if root.is_dir() else None
    if batches is None and (root / ARCHIVE_NAME).is_file():
        _extract_archive(root / ARCHIVE_NAME, root)
        batches = _batches_folder(root)
    if batches is not None:
        return _read_batches(batches, split)
    jpeg_files = _jpeg_tree(root, split)
    if jpeg_files:
        return _read_jpeg_tree(root, split, jpeg_files)
    if (root / JPEG_ARCHIVE_NAME).is_file():
        return _read_jpeg_archive(root / JPEG_ARCHIVE_NAME, root, split)
    if not download_missing:
        raise _missing(root)
    return _read_batches(_fetch_official(root, url, md5), split)
