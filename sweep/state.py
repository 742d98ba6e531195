"""The sweep folder's own files next to Tune's: the resolved spec and a small state record.

`colorsweep_spec.yaml` is the resolved spec the sweep started with (checked on every resume and read
by the analysis); `colorsweep_state.json` holds the finished flag and where MLflow writes.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

SPEC_FILE = "colorsweep_spec.yaml"
STATE_FILE = "colorsweep_state.json"


@dataclass(frozen=True)
class SweepState:
    finished: bool
    tracking_uri: str
    experiment_name: str
    parent_run_id: str


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_state(sweep_dir: Path) -> SweepState | None:
    path = sweep_dir / STATE_FILE
    return SweepState(**json.loads(path.read_text())) if path.exists() else None


def write_state(sweep_dir: Path, state: SweepState) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(sweep_dir / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")


def read_spec(sweep_dir: Path) -> dict | None:
    path = sweep_dir / SPEC_FILE
    return yaml.safe_load(path.read_text()) if path.exists() else None


def write_spec(sweep_dir: Path, resolved: dict) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(sweep_dir / SPEC_FILE, yaml.safe_dump(resolved, sort_keys=False))


def aside_name(sweep_dir: Path) -> str:
    return f"{sweep_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"


def move_aside(sweep_dir: Path, new_name: str) -> Path:
    """--fresh: keep the old results under a dated name, never delete them."""
    target = sweep_dir.with_name(new_name)
    sweep_dir.rename(target)
    return target
