"""Names the trainer and the sweep spec's checks share, without torch: the metrics
`Trainer.evaluate` reports and the config keys packed trials must agree on. Checking a spec
imports this module, not the trainer.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from trainable.config import CONTROL_NAMES, ControlConfig

PIXEL_ACC_THRESHOLDS = (1, 2, 5)
REALISM_METRICS = ("val_artefact", "val_realism_judged")    # every report (trainable.realism)
# Trials stepped together in one pack share one model layout, batch, device and data.
SHARED_KEYS = ("data", "model", "train.batch_size", "train.device", "train.precision",
               "train.channels_last")


def metric_names(controlled: Mapping[str, ControlConfig], conditioned: Sequence[str] = (),
                 kid: bool = False) -> list[str]:
    """Every key `Trainer.evaluate` returns for these controlled and conditioned statistics (and
    with `kid`, train.kid_every on, val_kid_controlled: trainable.realism)."""
    names = [f"val_{name}" for name in CONTROL_NAMES]
    names += [f"val_control_error_{name}" for name in controlled] + ["val_control_error"]
    for name in conditioned:      # evaluated on a grid of targets (trainable.condition.grid_metrics)
        names += [f"val_control_error_{name}", f"val_control_error_{name}_batch", f"val_control_monotonic_{name}"]
    names += [f"val_pixel_acc_{t}" for t in PIXEL_ACC_THRESHOLDS]
    names += ["val_psnr", "val_l1", "val_realism_abhist", "val_hue_js", "val_colorfulness_ratio"]
    return names + list(REALISM_METRICS) + (["val_kid_controlled"] if kid else [])


def control_symbol(key: str, separator: str = "_") -> str | None:
    """The paper's symbol for a control key: 'loss.saturation.weight' → 'λ_saturation',
    'loss.hue.target' → 'σ_hue'; None for any other key."""
    parts = key.split(".")
    symbols = {"weight": "λ", "target": "σ"}
    if len(parts) == 3 and parts[0] == "loss" and parts[1] in CONTROL_NAMES and parts[2] in symbols:
        return f"{symbols[parts[2]]}{separator}{parts[1]}"
    return None


def metric_names_of(cfg) -> list[str]:
    """Every metric name `Trainer.evaluate` reports for this config (a trainable.config.Config)."""
    return metric_names(cfg.loss.controlled(), tuple(cfg.loss.conditioned()), cfg.train.kid_every > 0)
