"""Training batches streamed from shards (trainable.shard_format): the source for sets larger than memory.

`ShardSource` is the `trainable.source.DataSource` of a shard folder: device batches of normalized
Lab, (B, 3, S, S) for `image_size` S, and a fixed validation set `val` on the device, as
`trainable.data.ColorData` is for a set in memory. `ShardStream` is one trainer's stream of it
with its own (seed, epoch, batch) position.
Loader workers read, decode, random-crop and flip whole batches (one tensor per batch crosses
between processes, not one per image) and, when the device is the CPU, convert them to Lab too; on
an accelerator the conversion runs there. RAM stays bounded: a worker holds only open shard files,
their offset tables and the batches in flight.

The order is a function of (seed, epoch): shards are permuted, then the images of each run of
`MIX_SHARDS` consecutive shards are permuted together (the conversion already shuffled globally,
so this reads a few shards at a time yet mixes well), and batch b's crops and flips are drawn from
(seed, epoch, b). `state_dict()` is (seed, epoch, batch); after `load_state_dict` the stream yields
exactly the batches an uninterrupted pass would have yielded next, whatever the worker count.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainable.color import rgb_to_lab_normalized
from trainable.shard_format import ShardError, check_shards, read_offsets
from trainable.source import DataSource, EpochPlan

VAL_BYTES = 1 << 30   # the validation set is kept on the device as float Lab; more needs data.val_limit
MIX_SHARDS = 8        # shards whose images are mixed together within an epoch
OPEN_SHARDS = 32      # shard files a reader keeps open
LAB_PIXELS = 1 << 19  # pixels a worker converts to Lab at once: bounds its float scratch memory


class ShardReader:
    """Images by (shard, slot) in one process; shard files opened lazily, the last few kept open."""

    def __init__(self, paths: list[Path], codec: str, size: int):
        self.paths, self.codec, self.size = paths, codec, size
        self._open: OrderedDict[int, tuple[int, np.ndarray, int]] = OrderedDict()
        self._pid = os.getpid()

    def _shard(self, shard: int) -> tuple[int, np.ndarray, int]:
        if self._pid != os.getpid():        # a forked worker: its parent's descriptors are not its own
            self._open, self._pid = OrderedDict(), os.getpid()
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        with open(self.paths[shard], "rb") as handle:
            offsets, start = read_offsets(handle, self.paths[shard])
        self._open[shard] = (os.open(self.paths[shard], os.O_RDONLY), offsets, start)
        if len(self._open) > OPEN_SHARDS:
            os.close(self._open.popitem(last=False)[1][0])
        return self._open[shard]

    def image(self, shard: int, slot: int, box: tuple[int, int, int]) -> np.ndarray:
        """The (crop, crop, 3) uint8 window (top, left, crop) of one image."""
        descriptor, offsets, start = self._shard(shard)
        size = int(offsets[slot + 1] - offsets[slot])
        blob = os.pread(descriptor, size, start + int(offsets[slot]))
        if len(blob) != size:
            raise ShardError(f"{self.paths[shard]}: truncated shard; delete it and run the conversion command again")
        top, left, crop = box
        if self.codec == "raw":
            return np.frombuffer(blob, np.uint8).reshape(self.size, self.size, 3)[top:top + crop, left:left + crop]
        try:
            with Image.open(io.BytesIO(blob)) as image:
                return np.asarray(image.convert("RGB").crop((left, top, left + crop, top + crop)))
        except (OSError, ValueError) as err:
            raise ShardError(f"{self.paths[shard]}: image {slot} does not decode ({err}); the shard is "
                             f"corrupt: delete it and run the conversion command again") from None


def epoch_order(counts: list[int], seed: int, epoch: int) -> np.ndarray:
    """(N, 2) [shard, slot] of one epoch: shards permuted, images mixed within runs of MIX_SHARDS."""
    rng = np.random.default_rng([seed, epoch])
    shards = rng.permutation(len(counts))
    parts = []
    for start in range(0, len(shards), MIX_SHARDS):
        group = shards[start:start + MIX_SHARDS]
        items = np.concatenate([np.stack([np.full(counts[s], s), np.arange(counts[s])], 1) for s in group])
        parts.append(items[rng.permutation(len(items))])
    return np.concatenate(parts)


def _to_lab(batch: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab_normalized(batch.float() / 255)


def _to_lab_in_parts(batch: torch.Tensor) -> torch.Tensor:
    """_to_lab a few images at a time, so a worker never holds the whole batch's intermediates."""
    lab = torch.empty(batch.shape, dtype=torch.float32)
    step = max(1, LAB_PIXELS // (batch.shape[-1] * batch.shape[-2]))
    for start in range(0, len(batch), step):
        lab[start:start + step] = _to_lab(batch[start:start + step])
    return lab


class EpochBatches(torch.utils.data.Dataset):
    """Batch b of one epoch, made in a loader worker: uint8 (B, 3, crop, crop), or Lab with lab;
    only the images of `part` (a slice of the batch: one data-parallel rank's) are read."""

    def __init__(self, reader: ShardReader, order: np.ndarray, batch_size: int, crop: int,
                 flip: bool, seed: int, epoch: int, lab: bool, part: slice = slice(None)):
        self.reader, self.order, self.batch_size, self.crop = reader, order, batch_size, crop
        self.flip, self.seed, self.epoch, self.lab, self.part = flip, seed, epoch, lab, part

    def __len__(self) -> int:
        return max(1, len(self.order) // self.batch_size)

    def __getitem__(self, b: int) -> torch.Tensor:
        items = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, b])
        corners = rng.integers(0, self.reader.size - self.crop + 1, (len(items), 2))
        flips = rng.random(len(items)) < 0.5 if self.flip else np.zeros(len(items), dtype=bool)
        # drawn for the whole batch, then cut: a rank's crops are those of the one-process batch
        items, corners, flips = items[self.part], corners[self.part], flips[self.part]
        out = np.empty((len(items), self.crop, self.crop, 3), dtype=np.uint8)
        for j, (shard, slot) in enumerate(items.tolist()):
            window = self.reader.image(shard, slot, (int(corners[j, 0]), int(corners[j, 1]), self.crop))
            out[j] = window[:, ::-1] if flips[j] else window
        batch = torch.from_numpy(out).permute(0, 3, 1, 2)
        return _to_lab_in_parts(batch) if self.lab else batch


class ShardSource(DataSource):
    """A shard folder as a `trainable.source.DataSource`: a fixed validation set on the device and
    epochs streamed from the shards, one loader per trainer of a pack.

    train_limit / val_limit (0 = all) cut each split to its first images in the converted (already
    shuffled) order. Validation images are center-cropped to image_size and kept on the device, at
    most VAL_BYTES of them: a larger validation split needs val_limit. An epoch's order, crops and
    flips are a function of one seed drawn from the trainer's generator (`plan`).
    """

    def __init__(self, path: str | Path, image_size: int, device: torch.device | str = "cpu",
                 workers: int = 2, prefetch: int = 2, train_limit: int = 0, val_limit: int = 0,
                 memory_format: torch.memory_format = torch.contiguous_format, checksum: bool = False):
        index = check_shards(path, image_size, checksum)
        self.device, self.memory_format = torch.device(device), memory_format
        self.image_size, self.workers, self.prefetch = image_size, workers, prefetch
        train = index.split("train")
        self.reader = ShardReader([p for p, _ in train], index.codec, index.image_size)
        self.counts = _cut([entry["count"] for _, entry in train], train_limit)
        self.val = self._load_val(index, val_limit)

    def _load_val(self, index, limit: int) -> torch.Tensor:
        shards = index.split("val")
        counts = _cut([entry["count"] for _, entry in shards], limit)
        need = sum(counts) * 3 * self.image_size ** 2 * 4
        if need > VAL_BYTES:
            raise ShardError(f"{index.root}: its {sum(counts)} validation images would take {need / 2 ** 30:.1f} GiB "
                             f"on the device; set data.val_limit (e.g. {VAL_BYTES // (12 * self.image_size ** 2)})")
        reader = ShardReader([p for p, _ in shards], index.codec, index.image_size)
        corner = (index.image_size - self.image_size) // 2
        box = (corner, corner, self.image_size)
        images = [reader.image(s, k, box) for s, count in enumerate(counts) for k in range(count)]
        if not images:
            raise ShardError(f"{index.root}: no validation images; convert again with a larger --val-fraction")
        rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device)
        return _to_lab(rgb).contiguous(memory_format=self.memory_format)

    @property
    def train_count(self) -> int:
        return sum(self.counts)

    def steps(self, batch_size: int) -> int:
        """Batches per epoch: the last partial batch is dropped, as in-memory epochs drop it."""
        return max(1, self.train_count // batch_size)

    def batches(self, batch_size: int, flip: bool, seed: int, epoch: int, start: int,
                memory_format: torch.memory_format, part: slice = slice(None)) -> Iterator[torch.Tensor]:
        """Batches start, start + 1, … of epoch (seed, epoch) as device Lab, each cut to `part`;
        the first `start` are never made."""
        lab_in_workers = self.device.type == "cpu"
        batches = EpochBatches(self.reader, epoch_order(self.counts, seed, epoch), batch_size,
                               self.image_size, flip, seed, epoch, lab_in_workers, part)
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=range(start, self.steps(batch_size)), num_workers=self.workers,
            prefetch_factor=self.prefetch if self.workers else None, pin_memory=self.device.type == "cuda")
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            yield (batch if lab_in_workers else _to_lab(batch)).contiguous(memory_format=memory_format)

    def _draw(self, generators: list[torch.Generator], batch_size: int, flip: bool, start: int,
              memory_format: torch.memory_format, states: list[torch.Tensor], part: slice) -> EpochPlan:
        seeds = [int(torch.randint(0, 2 ** 62, (), generator=generator)) for generator in generators]
        streams = [self.batches(batch_size, flip, seed, 0, start, memory_format, part) for seed in seeds]
        return StreamPlan(streams, self.steps(batch_size), states, start)


class StreamPlan(EpochPlan):
    """K trainers' epochs streamed side by side; batches are taken in order, none skipped."""

    def __init__(self, streams: list[Iterator[torch.Tensor]], steps: int, states: list[torch.Tensor], start: int):
        super().__init__(states, start)
        self.streams, self.steps = streams, steps

    def __len__(self) -> int:
        return self.steps

    def _make(self, step: int) -> torch.Tensor:
        if step != self.position:
            raise ValueError(f"streamed batches come in order: batch {self.position} is next, {step} was asked")
        batches = [next(stream) for stream in self.streams]
        return batches[0].unsqueeze(0) if len(batches) == 1 else torch.stack(batches)


class ShardStream:
    """One trainer's view of a ShardSource: batches with an exact, resumable (seed, epoch, batch)
    position (the benchmark's and a plain loop's; the trainer goes through `ShardSource.plan`)."""

    def __init__(self, path: str | Path, batch_size: int, image_size: int, device: torch.device | str = "cpu",
                 flip: bool = True, seed: int = 0, workers: int = 2, prefetch: int = 2, train_limit: int = 0,
                 val_limit: int = 0, memory_format: torch.memory_format = torch.contiguous_format,
                 checksum: bool = False):
        self.source = ShardSource(path, image_size, device, workers, prefetch, train_limit, val_limit,
                                  memory_format, checksum)
        self.val, self.memory_format = self.source.val, memory_format
        self.batch_size, self.flip, self.seed = batch_size, flip, seed
        self.epoch, self.batch = 0, 0

    @property
    def train_count(self) -> int:
        return self.source.train_count

    def __len__(self) -> int:
        return self.source.steps(self.batch_size)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"stream state: seed {state['seed']} saved, this stream has seed {self.seed}")
        self.epoch, self.batch = state["epoch"], state["batch"]

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The rest of the current epoch, from the position; then the position moves to the next one."""
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        for batch in self.source.batches(self.batch_size, self.flip, self.seed, self.epoch, self.batch,
                                         self.memory_format):
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0


def _cut(counts: list[int], limit: int) -> list[int]:
    """Per-shard counts keeping only the first `limit` images in shard order (0 = all)."""
    if not limit:
        return counts
    kept = np.minimum(counts, np.maximum(0, limit - np.concatenate([[0], np.cumsum(counts)[:-1]])))
    return [int(c) for c in kept]
