"""The report rendered from a hand-made sweep table with fake trial images (no training)."""
import base64
import re

import numpy as np
import pandas as pd
from PIL import Image

from analysis import report
from analysis.sweep_table import Sweep
from analysis.pareto import Objective


def fake_samples_png(folder, seed: int) -> None:
    """rows gray / ours / real of 4 square 8-px images, like Trainer.sample_grid."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / "samples.png")


def hand_sweep(tmp_path) -> Sweep:
    rng = np.random.default_rng(1)
    ids = [f"t{i}" for i in range(6)]
    table = pd.DataFrame({
        "trial_id": ids, "status": ["TERMINATED"] * 5 + ["ERROR"], "iterations": [3] * 5 + [1],
        "error": [""] * 5 + ["RuntimeError: boom"], "checkpoint": "",
        "path": [str(tmp_path / t) for t in ids],
        "val_control_error": rng.random(6), "val_realism_abhist": rng.random(6),
        "val_control_error_saturation": rng.random(6), "val_pixel_acc_5": rng.random(6),
        "loss.saturation.weight": rng.uniform(1, 40, 6), "loss.saturation.target": rng.random(6),
    })
    for i, t in enumerate(ids):
        fake_samples_png(tmp_path / t, i)
    curves = {t: pd.DataFrame({"epoch": [1, 2, 3], "val_control_error": rng.random(3),
                               "val_realism_abhist": rng.random(3)}) for t in ids[:5]}
    return Sweep(name="hand", table=table, params=["loss.saturation.weight", "loss.saturation.target"],
                 objectives=(Objective("val_control_error", "min"), Objective("val_realism_abhist", "min")),
                 curves=curves)


def test_report_embeds_every_plot_and_the_image_grid(tmp_path):
    out = tmp_path / "out" / "report.html"
    written = report.write_report(hand_sweep(tmp_path), out, top=3, images=4)
    text = out.read_text()
    images = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", text)
    # Pareto, control error vs params, realism vs params, importance, curves, image grid
    assert len(images) == 6 == len(re.findall("<img", text))
    assert [p.name for p in written[1:]] == [
        "report-pareto.png", "report-params-val_control_error.png",
        "report-params-val_realism_abhist.png", "report-importance.png", "report-curves.png",
        "report-samples.png"]
    for _, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ERROR: RuntimeError: boom" in text and "λ_saturation" in text
    assert text.count("<tr class='front'>") >= 1 and text.count("<tr class='unranked'>") == 1


def test_report_cli_refuses_a_missing_sweep(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such sweep folder" in err[0]
