"""Files on disk: every write goes to a temp name in the target's folder and is renamed into place, so a
reader or a crash at any moment sees the old file or the new one, never half of one; which file
names count as images; and whether a folder can be written before any work starts.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_name(name: str | Path) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def folder_problem(folder: str | Path) -> str | None:
    """Why files cannot be written in `folder` (made when missing), in a few words, or None. The
    nearest part of it that exists must be a folder that takes an unnamed temp file; nothing is
    left behind (a check by permissions alone passes for root, also in /proc)."""
    folder = Path(folder).absolute()
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror or type(err).__name__})"
    return None


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; when the block succeeds, fsync it and rename it to `path`.
    On an error the temp file is removed and `path` is untouched. The temp name is unique, so two
    writers of one path never share a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    temp = Path(name)
    try:
        yield temp
        with open(temp, "rb+") as handle:     # the bytes reach the disk before the rename names them
            os.fsync(handle.fileno())
        temp.chmod(0o644)                     # mkstemp makes 0600; these files are for everyone
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(handle)` on a binary handle to a temp file, then rename it to `path`."""
    with replacing(path) as temp, open(temp, "wb") as handle:
        write(handle)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_png(array: np.ndarray, path: Path) -> None:
    """A uint8 HWC RGB array as a PNG, written the atomic way."""
    write_atomic(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"))
