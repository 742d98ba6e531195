"""The report's figures: Optuna's own plots on the rebuilt study (Pareto front, parameter slices,
importance), plus the two Optuna has no plot for — learning curves of the top trials and the grid
of the same validation images colorized by each of them.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402

from analysis.sweep_table import Sweep  # noqa: E402
from trainable.files import write_atomic  # noqa: E402


def save(figure: plt.Figure, path: Path) -> Path:
    write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)
    return path


def _quiet(plot, *args, **kwargs):
    """Optuna's matplotlib plots are marked experimental; the warning says nothing to a reader."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plot(*args, **kwargs)


def _figure_of(axes) -> plt.Figure:
    return (np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes).figure


def pareto_plot(sweep: Sweep, study: optuna.Study, ranks: dict[str, int]) -> plt.Figure | None:
    """Optuna's Pareto-front scatter of the first two objectives, points labelled with their rank."""
    if len(sweep.objectives) < 2 or not study.trials:
        return None
    names = [o.label for o in sweep.objectives[:2]]
    ax = _quiet(optuna_plots.plot_pareto_front, study, target_names=names,
                targets=lambda t: (t.values[0], t.values[1]))
    for trial in study.trials:
        ax.annotate(f"#{ranks[trial.user_attrs['trial_id']]}", (trial.values[0], trial.values[1]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.figure.set_size_inches(7, 5)
    return ax.figure


def param_plots(sweep: Sweep, study: optuna.Study) -> list[plt.Figure]:
    """One figure per objective: that objective against each searched parameter (Optuna slices)."""
    if not study.trials or not sweep.params:
        return []
    figures = []
    for index, objective in enumerate(sweep.objectives):
        axes = _quiet(optuna_plots.plot_slice, study, params=list(sweep.params),
                      target=lambda t, i=index: t.values[i], target_name=objective.label)
        _plain_log_ticks(axes)
        figure = _figure_of(axes)
        figure.set_size_inches(4.5 * len(sweep.params), 4)
        figure.suptitle(f"{objective.label} against each searched parameter")
        figures.append(figure)
    return figures


def _plain_log_ticks(axes) -> None:
    """Log axes get ticks at 1, 2, 5 × 10^k written as plain numbers (matplotlib's default minor
    labels '6×10⁰ 7×10⁰ …' overlap on a narrow range such as λ in [5, 11])."""
    for ax in np.ravel(axes):
        if ax.get_xscale() == "log":
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def importance_plot(importances: pd.DataFrame) -> plt.Figure | None:
    """Bars of `analysis.importance.param_importances` (fANOVA via optuna.importance), one colour
    per objective. Drawn here rather than by Optuna's plot_param_importances so that the bars show
    exactly the numbers the report prints (that plot reuses one evaluator across objectives)."""
    if importances.dropna(how="all").empty:
        return None
    figure, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(importances) * len(importances.columns)))
    importances.iloc[::-1].plot.barh(ax=ax)
    ax.set_xlabel("importance (fANOVA, sums to 1 per objective)")
    ax.set_ylabel("")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return figure


def learning_curves(sweep: Sweep, ranked: pd.DataFrame, top: int) -> plt.Figure | None:
    """Each objective per epoch for the `top` best-ranked trials."""
    best = ranked[ranked["rank"].notna()].head(top)
    best = best[best["trial_id"].isin(sweep.curves)]
    if best.empty:
        return None
    figure, axes = plt.subplots(1, len(sweep.objectives), figsize=(5 * len(sweep.objectives), 3.6),
                                squeeze=False)
    for ax, objective in zip(axes[0], sweep.objectives):
        for _, row in best.iterrows():
            curve = sweep.curves[row["trial_id"]]
            if objective.metric in curve:
                ax.plot(curve["epoch"], curve[objective.metric], marker="o",
                        label=f"#{row['rank']} {row['trial_id']}")
        ax.set_xlabel("epoch")
        ax.set_title(objective.label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return figure


def image_grid(gray: np.ndarray, real: np.ndarray, rows: Sequence[tuple[str, np.ndarray]]) -> plt.Figure:
    """Rows of images (each (n, H, W, 3) uint8): the grayscale inputs, one row per trial with its
    label, then the real colors."""
    all_rows = [("grayscale input", gray), *rows, ("real colors", real)]
    width = max(4.0, 0.9 * len(gray) + 2.5)
    figure, axes = plt.subplots(len(all_rows), 1, figsize=(width, 1.0 * len(all_rows) + 0.3),
                                squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], all_rows):
        ax.imshow(np.concatenate(list(images), axis=1), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle("the same validation images colorized by the top trials")
    return figure
