"""Parameter importance from a study rebuilt from a hand-made sweep table."""
import numpy as np
import pandas as pd

from analysis.importance import build_study, common_epoch_rows, importance_summary, param_importances
from analysis.sweep_table import Sweep
from analysis.pareto import Objective


def hand_sweep(count: int = 24) -> Sweep:
    rng = np.random.default_rng(0)
    weight, target = rng.uniform(0, 40, count), rng.uniform(0, 1, count)
    table = pd.DataFrame({
        "trial_id": [f"t{i:02d}" for i in range(count)], "status": "TERMINATED", "iterations": 2,
        "loss.saturation.weight": weight, "loss.saturation.target": target,
        "val_control_error": 1.0 / (1.0 + weight),   # depends on λ only
        "val_realism_abhist": (target - 0.3) ** 2,    # depends on σ only
    })
    table.loc[0, "status"] = "ERROR"
    space = {"loss.saturation.weight": {"type": "loguniform", "low": 0.1, "high": 40},
             "loss.saturation.target": {"type": "uniform", "low": 0.0, "high": 1.0}}
    return Sweep(name="hand", table=table, params=list(space), spec={"space": space},
                 objectives=(Objective("val_control_error", "min"),
                             Objective("val_realism_abhist", "min")))


def test_study_holds_finished_trials_with_spec_distributions():
    sweep = hand_sweep()
    study = build_study(sweep)
    assert len(study.trials) == 23 and len(study.directions) == 2
    assert study.trials[0].user_attrs["trial_id"] == "t01"
    assert study.trials[0].distributions["loss.saturation.weight"].log


def test_importance_finds_the_parameter_each_objective_depends_on():
    importances = param_importances(hand_sweep())
    assert importances.loc["loss.saturation.weight", "val_control_error"] > 0.8
    assert importances.loc["loss.saturation.target", "val_realism_abhist"] > 0.8
    lines = importance_summary(importances)
    assert lines[0].startswith("val_control_error: loss.saturation.weight")


def test_too_few_trials_give_no_importance():
    sweep = hand_sweep(2)
    assert importance_summary(param_importances(sweep))[0].endswith("not enough finished trials")


def test_early_stopped_trials_are_compared_at_the_last_common_epoch():
    sweep = hand_sweep(4)
    sweep.table.loc[3, "status"] = "EARLY_STOPPED"
    sweep.curves = {t: pd.DataFrame({"epoch": [1, 2, 3, 4], "val_control_error": [9.0, i, 7.0, 6.0],
                                     "val_realism_abhist": [9.0, 10 * i, 7.0, 6.0]})
                    for i, t in enumerate(sweep.table["trial_id"])}
    sweep.curves["t03"] = sweep.curves["t03"].head(2)
    rows, epoch = common_epoch_rows(sweep)
    assert epoch == 2 and list(rows["trial_id"]) == ["t01", "t02", "t03"]  # t00 failed
    assert list(rows["val_control_error"]) == [1.0, 2.0, 3.0]
    assert list(rows["val_realism_abhist"]) == [10.0, 20.0, 30.0]
    assert len(build_study(sweep, rows).trials) == 3
