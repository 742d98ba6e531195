"""What the driver does once before any trial starts: find the data (or download and check it) and,
without a GPU, measure a few steps to say how long the sweep would take (sweep.estimate's arithmetic).

Trials only read the data `prepare_data` left in place: the official archive is fetched (MD5-checked)
and extracted here, the JPEG mirror decoded and cached as `train.npz` here, not once per trial.
Shards (data.dataset=shards) are checked here by their index and sizes, never read whole.
No Ray here; torch is imported only by the estimate and by the check of a realism objective.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np

from sweep.estimate import CPU_SIZED_WIDTH, Pace, Timing, no_gpu_line
from trainable.config import Config, DataConfig, apply_overrides
from trainable.datasets import load_raw
from trainable.shard_format import check_shards

MEASURED_STEPS = 2              # timed after one warm-up step
REALISM_OBJECTIVES = ("val_kid_controlled", "val_artefact")   # judged against a natural reference


def _missing_folders(path: str) -> list[Path]:
    """The folders on the way to path that do not exist yet, deepest first."""
    if not path:
        return []
    target = Path(path).expanduser()
    return [folder for folder in [target, *target.parents] if not folder.exists()]


def prepare_data(cfg: DataConfig) -> np.ndarray | None:
    """The training images as uint8 NHWC, read (or downloaded, checked and extracted) once; for
    data.dataset=shards None, after checking the folder without reading an image (its index, format
    version, every shard's size and the crop size: trainable.shard_format.check_shards).

    Raises DataError (one line) when the data is missing, unreadable, cannot be downloaded or fails
    its checksum; then any folder made on the way is removed again, so nothing is left behind.
    """
    if cfg.dataset == "shards":
        check_shards(cfg.path, cfg.image_size)
        return None
    created = _missing_folders(cfg.path)
    try:
        return load_raw(cfg, "train")
    except BaseException:
        for folder in created:           # deepest first; a folder that holds something stays
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def check_realism_reference(spec, images: np.ndarray | None) -> None:
    """Refuse (SpecError, one line) a spec that optimizes val_kid_controlled or val_artefact when
    some trial config has a target with fewer than train.realism_images natural reference images
    in the validation split: there the estimate would be missing or biased. Every searched value
    is tried with the others at their probe values."""
    from sweep.spec import SpecError, probe_config, probe_values
    realism = [o.metric for o in spec.objectives if o.metric in REALISM_OBJECTIVES]
    if not realism:
        return
    from trainable.realism import NaturalReference, reference_shortfall
    probe = probe_config(spec.config, spec.space)
    reference = NaturalReference(_validation(images, probe.data))
    configs = [probe] + [apply_overrides(probe, {key: value}) for key, dist in spec.space.items()
                         for value in probe_values(dist)]
    for cfg in configs:
        shortfall = reference_shortfall(cfg, reference)
        if shortfall:
            raise SpecError(f"objectives: {realism[0]} cannot be estimated: {shortfall}")


def _validation(images: np.ndarray | None, cfg: DataConfig):
    """The validation images a trial of cfg evaluates on, as normalized Lab on the CPU."""
    if images is None:
        from trainable.sources import held_out_images
        return held_out_images(cfg, "cpu")
    from trainable.data import validation_images
    return validation_images(images, cfg)


def _few_steps_source(cfg: Config, images: np.ndarray | None):
    """A data source holding just the images of MEASURED_STEPS + 1 steps and one evaluation batch."""
    count = cfg.train.batch_size * (MEASURED_STEPS + 1)
    if images is None:       # shards: decoded by the loader workers as a trial's are
        from trainable.stream import ShardSource
        return ShardSource(cfg.data.path, cfg.data.image_size, "cpu", workers=cfg.data.loader_workers,
                           train_limit=count, val_limit=cfg.train.eval_batch_size)
    from trainable.data import ColorData, to_lab
    lab = to_lab(images[:count], "cpu")
    return ColorData(train=lab, val=lab[: min(len(lab), cfg.train.eval_batch_size)])


def _measure(cfg: Config, images: np.ndarray | None) -> tuple[float, float]:
    """(median seconds of one training step, seconds to evaluate one image) of cfg, from a few real
    steps after a warm-up step and one evaluation batch."""
    from trainable.engine import Trainer, setup_process
    from trainable.loop import train_epoch
    setup_process(cfg)
    trainer = Trainer(cfg, data=_few_steps_source(cfg, images))
    stamps = [time.perf_counter()]
    train_epoch(trainer, lambda done, total: stamps.append(time.perf_counter()))
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    started = time.perf_counter()
    trainer.evaluate()
    return statistics.median(gaps[1:] or gaps), (time.perf_counter() - started) / len(trainer.data.val)


def _split_sizes(cfg: DataConfig, images: np.ndarray | None) -> tuple[int, int]:
    """(training images, validation images) before the limits."""
    if images is None:
        index = check_shards(cfg.path, cfg.image_size)
        return index.count("train"), index.count("val")
    from trainable.data import val_count
    val = val_count(len(images), cfg.val_fraction)
    return len(images) - val, val


def _counts(cfg: Config, images: np.ndarray | None) -> tuple[int, int]:
    """(training images, validation images) a trial of cfg uses."""
    train_count, val = _split_sizes(cfg.data, images)
    if cfg.data.val_limit:
        val = min(val, cfg.data.val_limit)
    if cfg.data.train_limit:
        train_count = min(train_count, cfg.data.train_limit)
    return train_count, val


def train_split_size(cfg: Config, images: np.ndarray | None) -> int:
    """The training images a trial of cfg uses out of `images` (None: the shards' index; gray ones,
    dropped later, counted)."""
    return _counts(cfg, images)[0]


def _timing(cfg: Config, images: np.ndarray | None, val: int) -> Timing:
    step_s, eval_image_s = _measure(cfg, images)
    return Timing(step_s, eval_image_s, cfg.train.batch_size, val)


def cpu_estimate(spec, images: np.ndarray | None, cpus: float) -> tuple[str, Pace]:
    """The rest of the launcher's 'no GPU: ' line (the sweep's length projected from steps measured
    now, and a CPU-sized sweep) and the pace it assumed, which the live display starts from."""
    from sweep.spec import probe_config
    probe = probe_config(spec.config, spec.space)
    threads = probe.train.threads or max(1, math.floor(cpus / spec.max_concurrent))   # as a trial gets
    cfg = apply_overrides(probe, {"train.threads": threads, "train.device": "cpu"})
    train_count, val = _counts(cfg, images)
    timing = _timing(cfg, images, val)
    small_cfg = apply_overrides(cfg, {"model.width": min(CPU_SIZED_WIDTH, cfg.model.width)})
    small = timing if small_cfg == cfg else _timing(small_cfg, images, val)
    return no_gpu_line(spec, cfg, cpus, threads, timing, train_count, small)
