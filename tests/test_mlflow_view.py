"""The MLflow view of a sweep's trials: the saved view's state and run names (quick), then the URL a
real smoke launch printed, opened by headless Chromium on a real `mlflow ui` (slow)."""
from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.mlflow_view import (SAVED_VIEW_TAG, SERVER, TRIALS_VIEW, column, trial_run_name, trials_view_state,
                                  trials_view_url)
from analysis.tracking import save_trials_view
from analysis.pareto import Objective
from analysis.store import ensure_store
from analysis.mlflow_runs import ROLE
from sweep.spec import load_spec
from tests.helpers import SMOKE, chromium

OBJECTIVES = (Objective("val_control_error", "min"), Objective("val_realism_abhist", "max"))
SEARCHED = ["loss.saturation.weight", "loss.saturation.target"]
WINDOW = (2000, 600)
DOM_TRIES = 5   # a dump that ran before the runs arrived is retried, each try a whole page load


def test_view_lists_trials_only_best_first_with_searched_and_objective_columns():
    state = trials_view_state(SEARCHED, OBJECTIVES)
    assert state["searchFilter"] == "tags.`colorsweep.role` = 'trial'"
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_control_error`", True)
    assert trials_view_state(SEARCHED, OBJECTIVES[::-1])["orderByAsc"] is False
    assert state["selectedColumns"] == ["metrics.`val_control_error`", "metrics.`val_realism_abhist`",
                                        "params.`loss.saturation.weight`", "params.`loss.saturation.target`"]
    assert state["columnOrder"] == state["selectedColumns"] == list(state["columnWidths"])
    widths = state["columnWidths"]
    assert widths["params.`loss.saturation.weight`"] > widths["metrics.`val_control_error`"]


def test_trial_run_name_puts_the_id_first_and_keeps_colliding_keys_whole():
    assert trial_run_name("4d76f90a", {"loss.saturation.weight": 10.5712, "loss.saturation.target": 0.53594,
                                       "model.conditioning": "film"}) == \
        "4d76f90a weight=10.6 target=0.536 conditioning=film"
    assert trial_run_name("a", {"loss.saturation.weight": 2.0, "loss.hue.weight": 3, "train.lr": 1e-4}) == \
        "a loss.saturation.weight=2 loss.hue.weight=3 lr=0.0001"


@pytest.mark.slow
def test_view_is_written_once_and_rewritten_when_the_spec_changes_it(tmp_path):
    from mlflow import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweep")
    client.set_experiment_tag(experiment, SAVED_VIEW_TAG + TRIALS_VIEW, "not JSON")
    saved = lambda: json.loads(client.get_experiment(experiment).tags[SAVED_VIEW_TAG + TRIALS_VIEW])
    save_trials_view(uri, experiment, SEARCHED, OBJECTIVES)
    first = saved()
    assert json.loads(first["state"]) == trials_view_state(SEARCHED, OBJECTIVES)
    save_trials_view(uri, experiment, SEARCHED, OBJECTIVES)      # a resume of the same spec
    assert saved() == first
    save_trials_view(uri, experiment, SEARCHED[:1], OBJECTIVES)
    assert json.loads(saved()["state"])["selectedColumns"][-1] == column("params", SEARCHED[0])


@pytest.mark.slow
@pytest.mark.integration
def test_printed_url_shows_every_trial_as_a_row_with_objective_columns(smoke_sweep_dir, tmp_path):
    from mlflow import MlflowClient
    from tests.serving_fixtures import free_port, server_env, start, stop, wait_until_up
    base = smoke_sweep_dir.parents[1]
    uri = json.loads((smoke_sweep_dir / "colorsweep_state.json").read_text())["tracking_uri"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    printed = re.search(r"then open (\S+)", (base / "launch.stdout").read_text()).group(1)
    assert printed == trials_view_url(experiment.experiment_id)
    spec = load_spec(SMOKE)
    saved = json.loads(experiment.tags[SAVED_VIEW_TAG + TRIALS_VIEW])
    assert json.loads(saved["state"]) == trials_view_state(list(spec.space), spec.objectives)
    trials = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = 'trial'")
    assert len(trials) == spec.num_samples == 4
    assert all(run.info.run_name.startswith(run.data.tags["trial_id"] + " weight=") for run in trials)
    names = [run.info.run_name for run in trials]
    if chromium() is None:
        pytest.skip("chromium is not installed: the view is saved but not opened")
    port, log = free_port(), tmp_path / "mlflow_ui.log"
    server = start([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                    "--port", str(port)], log, tmp_path, server_env())
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server, log)
        url = printed.replace(SERVER, f"http://127.0.0.1:{port}/")
        dom = settled_dom(url, tmp_path, names)
        shot = tmp_path / "mlflow_runs.png"
        browse(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    finally:
        stop(server)
    assert all(name in link_texts(dom) for name in names), link_texts(dom)
    headers = header_texts(dom)
    for objective in spec.objectives:
        assert headers.get(column("metrics", objective.metric)) == objective.metric, headers
    for key in spec.space:
        assert headers.get(column("params", key)) == key, headers
    assert "smoke" not in link_texts(dom)        # the parent run is not a row, so nothing is nested
    assert re.search(r"<strong>4</strong> matching runs", dom)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.shape[:2] == WINDOW[::-1] and pixels.std() > 10


def browse(url: str, profile: Path, *action: str) -> str:
    """One headless page load; the virtual-time budget lets the page's own requests and timers run
    to the end before the action (its budget is virtual time: a slow machine does not cut it)."""
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                           "--virtual-time-budget=30000", *action, url],
                          check=True, capture_output=True, text=True, timeout=300)
    return done.stdout


def settled_dom(url: str, folder: Path, names: list[str]) -> str:
    """The DOM once it holds every trial's name (a fresh profile per try: no state carried over)."""
    for attempt in range(DOM_TRIES):
        dom = browse(url, folder / f"profile-{attempt}", "--dump-dom")
        if all(name in link_texts(dom) for name in names):
            return dom
    return dom


def link_texts(dom: str) -> list[str]:
    return [html.unescape(text) for text in re.findall(r"<a [^>]*><span[^>]*>([^<]+)</span></a>", dom)]


def header_texts(dom: str) -> dict[str, str]:
    """Column id → the header's label, for the header cells the grid rendered (it renders only the
    columns in view)."""
    cells = re.findall(r'class="ag-header-cell [^"]*" role="columnheader"[^>]*col-id="([^"]+)".*?'
                       r'data-testid="sort-header-[^"]*">([^<]*)<', dom, flags=re.S)
    return {html.unescape(column_id): html.unescape(label) for column_id, label in cells}
