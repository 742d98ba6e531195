"""Every file name colorsweep writes, and the one reader and writer of a sweep folder's own files.

A training folder (`trainable.train`, a sweep's `final/`): `checkpoint/latest.pt` (+ `previous.pt`),
`config.yaml`, `metrics.jsonl`. A trial checkpoint (one per Tune report): `latest.pt`, `samples.png`,
`generator.pt`, `report.json`. A sweep folder: Tune's files plus `colorsweep_spec.yaml` (the
resolved spec, checked on every resume), `colorsweep_state.json` (finished flag, where MLflow
writes), `.progress/` (each running trial's place in its epoch, `sweep.trial_progress`),
`interrupted/<trial_id>/` (a trial's state saved mid-epoch as its launcher stopped),
`study.db` (the Optuna study, unless `--study-storage` names a database) and `final/`
(`final.json`, `test_metrics.json`, `samples.png`, `generator.pt`).
Only json and yaml here (no torch, Ray or MLflow): spec checks, the analysis and the cores read it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from trainable.config import ConfigError, read_yaml
from trainable.files import write_text_atomic

LATEST = "latest.pt"
PREVIOUS = "previous.pt"
CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES = "samples.png"
GENERATOR = "generator.pt"
REPORT = "report.json"
SPEC_FILE = "colorsweep_spec.yaml"
STATE_FILE = "colorsweep_state.json"
PROGRESS_DIR = ".progress"
STUDY_DB = "study.db"
FINAL_DIR = "final"
FINAL_RECORD = "final.json"
TEST_METRICS = "test_metrics.json"
STOP_FILE = ".stop"                   # in a sweep folder while its launcher stops: trials save where they are
INTERRUPTED_DIR = "interrupted"       # in a sweep folder: <trial_id>/, the state a trial saved mid-epoch


@dataclass(frozen=True)
class SweepState:
    finished: bool
    tracking_uri: str
    experiment_name: str
    parent_run_id: str
    study_storage: str = ""          # --study-storage without its password; "" for the sweep's own study.db


def read_state(sweep_dir: Path) -> SweepState | None:
    """The sweep's state (None when absent); ConfigError names a damaged file."""
    path = Path(sweep_dir) / STATE_FILE
    try:
        return SweepState(**json.loads(path.read_text())) if path.exists() else None
    except (ValueError, TypeError) as err:      # not JSON, or not our fields
        raise ConfigError(f"{path}: not a colorsweep state file ({err}); --fresh starts the sweep over") from None


def write_state(sweep_dir: Path, state: SweepState) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(sweep_dir) / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")


def read_spec(sweep_dir: Path) -> dict | None:
    """The resolved spec the sweep started with (None when absent); ConfigError names the file."""
    path = Path(sweep_dir) / SPEC_FILE
    return read_yaml(path) if path.exists() else None


def write_spec(sweep_dir: Path, resolved: dict) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(sweep_dir) / SPEC_FILE, yaml.safe_dump(resolved, sort_keys=False))


def aside_name(sweep_dir: Path) -> str:
    return f"{Path(sweep_dir).name}.old-{time.strftime('%Y%m%d-%H%M%S')}"


def move_aside(sweep_dir: Path, new_name: str) -> Path:
    """--fresh: keep the old results under a dated name, never delete them."""
    target = Path(sweep_dir).with_name(new_name)
    Path(sweep_dir).rename(target)
    return target
