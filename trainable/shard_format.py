"""The shard format: one `index.json` and shard files of encoded images, and its checks.

A shard file is `MAGIC`, the image count n (uint32), n + 1 uint64 offsets into the data after them,
then the n images back to back: JPEG files, or raw uint8 (S, S, 3) RGB for codec "raw". Every image
of a folder has the index's `image_size` S. `index.json` names the format and its version, the
conversion's settings, and per finished shard its split, image count, size in bytes and SHA-256;
`complete` is true only when every planned shard is written. Readers refuse anything else with one
line saying what to do (`ShardError`).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainable.download import DataError

FORMAT = "colorsweep-shards"
VERSION = 1
INDEX = "index.json"
MAGIC = b"CSSHARD1"
HEADER = struct.Struct("<8sI")
CODECS = ("jpeg", "raw")


class ShardError(DataError):
    """A shard folder that cannot be used as it is; the message names the path and what to do."""


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.bin"


def encode_shard(blobs: list[bytes]) -> bytes:
    """The bytes of one shard file holding these encoded images, in order."""
    offsets = np.zeros(len(blobs) + 1, dtype="<u8")
    np.cumsum([len(blob) for blob in blobs], out=offsets[1:])
    return HEADER.pack(MAGIC, len(blobs)) + offsets.tobytes() + b"".join(blobs)


def read_offsets(handle, where: Path) -> tuple[np.ndarray, int]:
    """(offsets relative to the data start, data start) of an open shard file."""
    head = handle.read(HEADER.size)
    if len(head) < HEADER.size or HEADER.unpack(head)[0] != MAGIC:
        raise ShardError(f"{where}: not a {FORMAT} shard file; convert again into an empty folder")
    count = HEADER.unpack(head)[1]
    offsets = np.frombuffer(handle.read(8 * (count + 1)), dtype="<u8")
    if len(offsets) != count + 1:
        raise ShardError(f"{where}: truncated shard; delete it and run the conversion command again")
    return offsets.astype(np.int64), HEADER.size + 8 * (count + 1)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardIndex:
    """A parsed `index.json`: the settings and the finished shards, {name: entry}."""
    root: Path
    settings: dict
    shards: dict
    complete: bool

    @property
    def image_size(self) -> int:
        return self.settings["image_size"]

    @property
    def codec(self) -> str:
        return self.settings["codec"]

    def split(self, split: str) -> list[tuple[Path, dict]]:
        """(path, entry) of every shard of split ("train" or "val"), in name order."""
        return [(self.root / name, entry) for name, entry in sorted(self.shards.items())
                if entry["split"] == split]

    def count(self, split: str) -> int:
        return sum(entry["count"] for _, entry in self.split(split))


def index_text(settings: dict, shards: dict, complete: bool) -> str:
    """index.json's text: the same conversion always gives the same bytes."""
    body = {"format": FORMAT, "version": VERSION, "complete": complete, "settings": settings,
            "shards": {name: shards[name] for name in sorted(shards)}}
    return json.dumps(body, indent=1, sort_keys=True) + "\n"


def read_index(root: Path) -> ShardIndex | None:
    """root's index, None when it has none; another format or version is a ShardError."""
    path = root / INDEX
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        fmt, version = body.get("format"), body.get("version")
    except (OSError, ValueError, AttributeError) as err:
        raise ShardError(f"{path}: unreadable ({err}); convert again into an empty folder") from None
    if fmt != FORMAT or version != VERSION:
        raise ShardError(f"{path}: written as {fmt} version {version}, this colorsweep reads {FORMAT} "
                         f"version {VERSION}; convert the images again into a new folder")
    return ShardIndex(root, body["settings"], body["shards"], body["complete"])


def check_shard(path: Path, entry: dict, checksum: bool) -> None:
    """A ShardError unless path has the entry's size (and, with checksum, its SHA-256)."""
    if not path.is_file():
        raise ShardError(f"{path}: missing; run the conversion command again to write it")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ShardError(f"{path}: {size} bytes, the index says {entry['bytes']} (truncated?); "
                         f"delete it and run the conversion command again")
    if checksum and file_sha256(path) != entry["sha256"]:
        raise ShardError(f"{path}: checksum differs from the index (corrupt); delete it and run the "
                         f"conversion command again")


def open_shards(root: str | Path, checksum: bool = False) -> ShardIndex:
    """A finished shard folder's index, every shard present at its size (checksum: and content).

    Without checksum this reads no image data, only the index and each shard's size: the cheap
    check a launcher can make once before starting work.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ShardError(f"{root}: no such folder; convert images into it with "
                         f"python -m trainable.shards SRC {root}")
    index = read_index(root)
    if index is None:
        raise ShardError(f"{root}: no {INDEX}; convert images into it with python -m trainable.shards SRC {root}")
    if not index.complete:
        raise ShardError(f"{root}: conversion not finished; run the same python -m trainable.shards "
                         f"command again to finish it")
    for name, entry in index.shards.items():
        check_shard(root / name, entry, checksum)
    if index.count("train") == 0:
        raise ShardError(f"{root}: no training images; convert a larger image set")
    return index


def check_shards(path: str | Path, image_size: int, checksum: bool = False) -> ShardIndex:
    """The index of a finished shard folder whose images can give image_size crops; reads no image
    data (with checksum: every shard's bytes). Anything else is a ShardError, one line."""
    index = open_shards(path, checksum)
    if image_size > index.image_size:
        raise ShardError(f"{index.root}: images are {index.image_size}px, data.image_size={image_size} is "
                         f"larger; convert again with --size {image_size} or train smaller crops")
    return index
