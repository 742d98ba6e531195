"""Fixtures shared by the tests (the plain helpers they use are in tests/helpers.py), and the marker
rule: tests marked `gpu` run only when the -m expression names gpu (`pytest -m gpu`), so
`pytest -m "not slow"` skips them as plain `pytest` does."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import make_smoke_sweep


def pytest_collection_modifyitems(config, items):
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_sweep_dir(tmp_path_factory) -> Path:
    """`sweeps/smoke` of one real smoke launch per test session, shared by the analysis, final and
    Colab tests; `.parents[1]` holds `sweeps/` and `mlflow.db`."""
    return make_smoke_sweep(tmp_path_factory.getbasetemp() / "analysis_smoke")
