"""analysis.rank and analysis.report on a real smoke sweep made by `python -m sweep.launch`
(real Ray, real MLflow sqlite store in a temp dir); the sweep is made once per test session."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from analysis import rank, report
from analysis.load import load_sweep
from analysis.mlflow_runs import load_mlflow_sweep
from tests.helpers import chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OBJECTIVES = ["val_control_error", "val_realism_abhist"]


@pytest.fixture
def sweep_dir(smoke_sweep_dir) -> Path:
    return smoke_sweep_dir


def test_rank_cli_marks_a_true_pareto_front(sweep_dir, tmp_path, capsys):
    assert rank.main([str(sweep_dir), "--csv", str(tmp_path / "r.csv"), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "sweep smoke: 4 trials" in out and "status: TERMINATED 4" in out
    table = pd.read_csv(tmp_path / "r.csv", dtype={"trial_id": str})
    assert list(table["rank"]) == [1, 2, 3, 4] and len(json.loads((tmp_path / "r.json").read_text())) == 4
    assert {"val_control_error_saturation", "val_pixel_acc_5", "loss.saturation.weight",
            "loss.saturation.target"} <= set(table.columns)
    costs = table[OBJECTIVES].to_numpy()
    dominated = [((costs <= c).all(axis=1) & (costs < c).any(axis=1)).any() for c in costs]
    assert list(table["pareto"]) == [not d for d in dominated]
    front = table[table["pareto"]]
    assert front["score"].min() == table["score"].min()  # rank 1 is on the front


def test_mlflow_experiment_gives_the_same_table(sweep_dir):
    from_folder = rank.ranked(load_sweep(sweep_dir)).set_index("trial_id")
    state = json.loads((sweep_dir / "colorsweep_state.json").read_text())
    from_mlflow = rank.ranked(load_mlflow_sweep("smoke", state["tracking_uri"])).set_index("trial_id")
    assert sorted(from_mlflow.index) == sorted(from_folder.index)
    for column in OBJECTIVES + ["rank", "loss.saturation.weight", "iterations"]:
        assert np.allclose(from_mlflow.loc[from_folder.index, column].astype(float),
                           from_folder[column].astype(float)), column


def test_rank_cli_bad_objective_is_one_line(sweep_dir, capsys):
    assert rank.main([str(sweep_dir), "--objective", "val_nope:min"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val_nope" in err[0]


def test_unwritable_outputs_are_one_line(sweep_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert rank.main([str(sweep_dir), "--csv", str(blocker / "ranking.csv")]) == 2
    assert report.main([str(sweep_dir), "-o", str(blocker / "report.html"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(str(blocker) in line for line in err), err


def screenshot(html: Path, png: Path, profile: Path) -> None:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1400,3000",
                    html.resolve().as_uri()], check=True, capture_output=True, timeout=120)


def test_report_embeds_plots_and_grid_and_is_logged(sweep_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert report.main([str(sweep_dir), "-o", str(out), "--top", "3"]) == 0
    text = out.read_text()
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", text)) == 6 == text.count("<img")
    assert "σ_saturation" in text and "#1 " in text
    pngs = sorted(p.name for p in tmp_path.glob("report-*.png"))
    assert len(pngs) == 6 and "report-samples.png" in pngs
    grid = np.asarray(Image.open(tmp_path / "report-samples.png").convert("RGB")).astype(float)
    assert grid.std() > 10  # images, not an empty canvas
    state = json.loads((sweep_dir / "colorsweep_state.json").read_text())
    logged = MlflowClient(state["tracking_uri"]).list_artifacts(state["parent_run_id"], "report")
    assert {Path(f.path).name for f in logged} >= {"report.html", "report-samples.png"}
    if chromium() is None:
        pytest.skip("chromium is not installed: report written but not screenshotted")
    shot = tmp_path / "screenshot.png"
    screenshot(out, shot, tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.shape[:2] == (3000, 1400) and pixels.std() > 10
