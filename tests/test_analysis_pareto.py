"""Pareto layers and the scalar rank on hand-made tables whose answer is known."""
import numpy as np
import optuna
import pandas as pd
import pytest

from analysis.sweep_table import Sweep, mark_early_stopped
from analysis.pareto import Objective, non_dominated_layers, parse_objective, rank_table

OBJECTIVES = (Objective("val_control_error", "min"), Objective("val_realism_abhist", "min"))


def hand_table() -> pd.DataFrame:
    rows = [  # trial, status, reports, control error, realism distance
        ("a", "TERMINATED", 4, 0.1, 0.5),
        ("b", "TERMINATED", 4, 0.2, 0.2),
        ("c", "TERMINATED", 4, 0.5, 0.1),
        ("d", "TERMINATED", 4, 0.3, 0.3),   # dominated by b
        ("e", "TERMINATED", 4, 0.6, 0.6),   # dominated by d
        ("h", "TERMINATED", 4, 0.2, 0.2),   # same as b
        ("f", "ERROR", 1, np.nan, np.nan),
        ("g", "TERMINATED", 2, 0.0, 0.0),   # stopped early by ASHA: best numbers, not ranked
    ]
    table = pd.DataFrame(rows, columns=["trial_id", "status", "iterations",
                                        "val_control_error", "val_realism_abhist"])
    return mark_early_stopped(table)


def test_rank_on_hand_made_table():
    table = rank_table(hand_table(), OBJECTIVES)
    assert list(table["trial_id"]) == ["b", "h", "a", "c", "d", "e", "g", "f"]
    assert list(table["rank"].iloc[:6]) == [1, 2, 3, 4, 5, 6]
    assert table["rank"].iloc[6:].isna().all()
    layers = dict(zip(table["trial_id"], table["pareto_layer"]))
    assert [layers[t] for t in "abchde"] == [1, 1, 1, 1, 2, 3]
    assert set(table.loc[table["pareto"], "trial_id"]) == {"a", "b", "c", "h"}
    scores = dict(zip(table["trial_id"], table["score"]))
    assert scores["b"] == pytest.approx(0.2) and scores["a"] == pytest.approx(0.4)
    assert scores["e"] == pytest.approx(1.0)
    status = dict(zip(table["trial_id"], table["status"]))
    assert status["g"] == "EARLY_STOPPED" and status["f"] == "ERROR"


def test_maximized_objective_flips():
    table = hand_table().rename(columns={"val_realism_abhist": "val_psnr"})
    table["val_psnr"] = -table["val_psnr"]  # same ordering when maximized
    ranked = rank_table(table, (OBJECTIVES[0], parse_objective("val_psnr:max")))
    assert list(ranked["trial_id"].iloc[:6]) == ["b", "h", "a", "c", "d", "e"]


def test_unknown_objective_is_named():
    with pytest.raises(KeyError, match="val_nope"):
        rank_table(hand_table(), (Objective("val_nope", "min"),))
    with pytest.raises(ValueError, match="mode"):
        parse_objective("val_psnr:up")


def test_first_layer_matches_optuna_best_trials():
    rng = np.random.default_rng(3)
    costs = rng.random((40, 3)).round(1)  # rounding makes ties and duplicates
    study = optuna.create_study(directions=["minimize"] * 3)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for values in costs:
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist,
                                                  values=list(values)))
    front = {t.number for t in study.best_trials}
    assert set(np.flatnonzero(non_dominated_layers(costs) == 1)) == front
    layers = non_dominated_layers(costs)
    for i in range(len(costs)):  # each later-layer point is dominated by one a layer earlier
        if layers[i] > 1:
            earlier = costs[layers == layers[i] - 1]
            assert ((earlier <= costs[i]).all(axis=1) & (earlier < costs[i]).any(axis=1)).any()


def test_sweep_holds_the_table():
    sweep = Sweep(name="hand", table=hand_table(), params=[], objectives=OBJECTIVES)
    assert sweep.metrics() == ["val_control_error", "val_realism_abhist"]
