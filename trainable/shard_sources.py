"""What `python -m trainable.shards` converts: the images of SRC, listed once in a fixed order.

SRC is one of: a folder tree of image files (any depth); a Places365 folder as torchvision lays it
out (`places365_train_standard.txt` next to `data_256_standard/`), or `train_256_places365standard.tar`
(any tar of images) read in place; a CIFAR-10 folder or archive in any form `trainable.cifar10`
reads (its train split); an .npz with uint8 NHWC `images`. A source lists `names` (sorted, or in
the file list's order) and reads item i as encoded bytes or as a uint8 (H, W, 3) array.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from trainable.cifar10 import ARCHIVE_NAME, BATCHES_NAME, JPEG_ARCHIVE_NAME, load_cifar10, read_npz_images
from trainable.files import IMAGE_SUFFIXES, is_image_name
from trainable.shard_format import ShardError

PLACES_LIST = "places365_train_standard.txt"
PLACES_FOLDER = "data_256_standard"
PLACES_TAR = "train_256_places365standard.tar"
WANTED = ("an image folder, a Places365 folder or .tar, a CIFAR-10 folder or archive, "
          "or an .npz with uint8 NHWC 'images'")


class FileSource:
    """Image files under a folder, named by their path relative to it."""

    def __init__(self, root: Path, names: list[str], kind: str):
        self.root, self.names, self.kind = root, names, kind

    def read(self, index: int) -> bytes:
        return (self.root / self.names[index]).read_bytes()


class TarSource:
    """Image members of an uncompressed tar, read in place by offset (each process opens its own)."""

    def __init__(self, path: Path, names: list[str], spans: list[tuple[int, int]]):
        self.path, self.names, self.spans, self.kind = path, names, spans, "tar"
        self._handle, self._pid = None, None

    def read(self, index: int) -> bytes:
        if self._pid != os.getpid():
            self._handle, self._pid = open(self.path, "rb"), os.getpid()
        start, size = self.spans[index]
        return os.pread(self._handle.fileno(), size, start)


class ArraySource:
    """Images of one uint8 (N, H, W, 3) array, named by their position."""

    def __init__(self, images: np.ndarray, kind: str):
        self.images, self.kind = images, kind
        self.names = [f"#{i}" for i in range(len(images))]

    def read(self, index: int) -> np.ndarray:
        return self.images[index]


def _places_list(path: Path) -> list[str]:
    """A Places365 file list's image paths ("/a/airfield/00000001.jpg 0" → "a/airfield/00000001.jpg")."""
    try:
        lines = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: unreadable file list ({err}); get it again from the Places365 devkit") from None
    return [line.split()[0].lstrip("/") for line in lines if line.strip()]


def _tar_source(path: Path, wanted: list[str] | None) -> TarSource:
    """The image members of the tar at path; with wanted, those of the list (its first path part,
    `data_256/` or so, ignored), in the list's order."""
    spans = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isfile() and is_image_name(member.name):
                    key = member.name.split("/", 1)[-1] if wanted is not None else member.name
                    spans[key] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ShardError(f"{path}: cannot read as an uncompressed tar ({err}); give the .tar itself") from None
    names = sorted(spans) if wanted is None else [name for name in wanted if name in spans]
    if not names:
        raise ShardError(f"{path}: holds no images ({'/'.join(sorted(IMAGE_SUFFIXES))}) "
                         f"{'named in the file list ' if wanted is not None else ''}; give a tar of images")
    return TarSource(path, names, [spans[name] for name in names])


def _is_cifar(folder: Path) -> bool:
    return any((folder / name).exists() for name in (BATCHES_NAME, ARCHIVE_NAME, JPEG_ARCHIVE_NAME,
                                                      "train.npz", "data_batch_1"))


def _folder_source(root: Path) -> FileSource:
    if root.is_dir() and not any(root.iterdir()):
        raise ShardError(f"{root}: empty folder; give {WANTED}")
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if is_image_name(p) and p.is_file())
    if not names:
        raise ShardError(f"{root}: holds no images ({'/'.join(sorted(IMAGE_SUFFIXES))}); give {WANTED}")
    return FileSource(root, names, "folder")


def _places_source(root: Path) -> FileSource | TarSource:
    wanted = _places_list(root / PLACES_LIST)
    if (root / PLACES_FOLDER).is_dir():
        images = root / PLACES_FOLDER
        names = [name for name in wanted if (images / name).is_file()]
        if not names:
            raise ShardError(f"{images}: none of the images {root / PLACES_LIST} names; "
                             f"extract {PLACES_TAR} there or give the tar")
        return FileSource(images, names, "places365")
    return _tar_source(root / PLACES_TAR, wanted)


def find_source(src: str | Path) -> FileSource | TarSource | ArraySource:
    """SRC's images, listed; a ShardError naming SRC when it is missing, empty or holds no images."""
    src = Path(src).expanduser()
    if not src.exists():
        raise ShardError(f"{src}: no such file or folder; give {WANTED}")
    if src.is_file():
        if src.suffix == ".npz":
            return ArraySource(read_npz_images(src), "npz")
        if src.name in (ARCHIVE_NAME, JPEG_ARCHIVE_NAME):
            return ArraySource(load_cifar10(str(src), "train"), "cifar10")
        if src.suffix == ".tar":
            wanted = src.parent / PLACES_LIST
            return _tar_source(src, _places_list(wanted) if src.name == PLACES_TAR and wanted.is_file() else None)
        raise ShardError(f"{src}: not a folder, .tar or .npz; give {WANTED}")
    if (src / PLACES_LIST).is_file() and ((src / PLACES_FOLDER).is_dir() or (src / PLACES_TAR).is_file()):
        return _places_source(src)
    if _is_cifar(src):
        return ArraySource(load_cifar10(str(src), "train"), "cifar10")
    return _folder_source(src)
