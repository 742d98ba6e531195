"""Files on disk: every write goes to a temp name in the target's folder and is renamed into place, so a
reader or a crash at any moment sees the old file or the new one, never half of one; and which file
names count as images.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_name(name: str | Path) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


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
