"""The MLflow UI view of a sweep's trials: one row per trial, its searched values and objectives as
columns, best first, opened by the URL the launcher prints.

MLflow 3.17's runs page nests child runs (tag mlflow.parentRunId) under their collapsed parent and
shows no param or metric column until picked. Its URL query holds only the search facets
(searchFilter, orderByKey, ...); columns live in the browser's local storage. A saved view can hold
both: an experiment tag `mlflow.sharedViewState.<key>` whose value is
`{"name", "createdAt", "updatedAt", "state": "<JSON of facets and UI state>"}`, opened by
`?viewStateShareKey=<key>` and listed among the experiment's saved views. Its search filter keeps the
parent run out of the result, and the UI fetches the missing parents of child runs only when there is
no filter and no order other than by date, so the trials stay flat rows.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote

from analysis.mlflow_runs import ROLE
from analysis.pareto import Objective

SAVED_VIEW_TAG = "mlflow.sharedViewState."   # + key: MLflow 3.17's saved views of the runs page
TRIALS_VIEW = "colorsweep-trials"            # the key: one view per experiment, rewritten when it changes
TRIALS_VIEW_NAME = "colorsweep: trials"      # shown in the UI's list of saved views
SERVER = "http://127.0.0.1:5000/"             # `mlflow ui`'s default address
WORKFLOW = "workflowType=machine_learning"    # MLflow 3: the runs page, not the GenAI one
SHOW_ALL_RUNS = "SHOW_ALL"                    # charts draw every trial, not the first 10
CHAR_PX, HEADER_PADDING_PX = 8, 48            # a header's characters and its sort icon and margins


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it (its column ids and sort keys): kind.`key`."""
    return f"{kind}.`{key}`"


def header_width(name: str) -> int:
    """Pixels that show a column's whole key: the UI's default width cuts `loss.saturation.weight`
    and `loss.saturation.target` to the same `loss.saturation…`."""
    key = name.split("`")[1]
    return CHAR_PX * len(key) + HEADER_PADDING_PX


def trials_view_state(searched: Sequence[str], objectives: Sequence[Objective]) -> dict:
    """The saved view's state: trial runs only (so not nested), best first by the first objective,
    the objectives then the searched params as columns."""
    first = objectives[0]
    columns = [column("metrics", o.metric) for o in objectives] + [column("params", key) for key in searched]
    return {"searchFilter": f"tags.`{ROLE}` = 'trial'",
            "orderByKey": column("metrics", first.metric), "orderByAsc": first.sign > 0,
            "selectedColumns": columns, "columnOrder": columns,
            "columnWidths": {name: header_width(name) for name in columns},
            "runsHiddenMode": SHOW_ALL_RUNS}


def trial_run_name(trial_id: str, searched: Mapping[str, object]) -> str:
    """`<trial id> weight=10.6 target=0.536`: the id first, so a name the parent run's page cuts
    still tells its trials apart; a key by its last part unless two searched keys share it."""
    last = [key.rsplit(".", 1)[-1] for key in searched]
    names = [short if last.count(short) == 1 else key for key, short in zip(searched, last)]
    values = [f"{value:.3g}" if isinstance(value, float) else str(value) for value in searched.values()]
    return " ".join([trial_id, *(f"{name}={value}" for name, value in zip(names, values))])


def trials_view_url(experiment_id: str, server: str = SERVER) -> str:
    """The experiment's runs page opened on the trials view (`analysis.tracking.save_trials_view`
    wrote it)."""
    return f"{server}#/experiments/{experiment_id}/runs?viewStateShareKey={quote(TRIALS_VIEW)}&{WORKFLOW}"


def run_page_url(experiment_id: str, run_id: str, server: str = SERVER) -> str:
    return f"{server}#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"
