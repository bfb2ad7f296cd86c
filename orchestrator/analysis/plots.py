"""Static figures (matplotlib) of the analysis frames, for the notebooks and the README.

Each function draws one frame from orchestrator.analysis.runs / anytime / usage / importance on an
axis (a new figure if none is given) and returns the figure, so a notebook cell stays one line
and the same figure can be saved. Static because a figure must render in CI, on GitHub and in a
PDF export; the notebooks add plotly only where interaction helps (`interactive()`).

`save(fig, name)` writes a PNG to `$HPO_FIGURES` when it is set (the notebook test checks those
files; the README's figures were made that way) and does nothing otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from orchestrator.analysis.anytime import AXES, aggregate

FIGURES = "HPO_FIGURES"
STATUS_COLORS = {"completed": "tab:blue", "stopped": "tab:orange", "errored": "tab:red",
                 "running": "tab:gray", "pending": "tab:gray"}


def interactive() -> bool:
    """Whether to add plotly figures: plotly is installed and `HPO_STATIC` is not set (CI sets it,
    so every cell's output there is static)."""
    return not os.environ.get("HPO_STATIC") and importlib.util.find_spec("plotly") is not None


def save(fig, name: str) -> Path | None:
    """Writes `fig` as `$HPO_FIGURES/<name>.png` when that variable is set; returns the path."""
    folder = os.environ.get(FIGURES)
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    return path


def _axis(ax, size=(7, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
    return ax.figure, ax


def _log_if_wide(ax, values: pd.Series, decades: float = 2) -> None:
    """A log y axis when every value is positive and they span more than `decades` decades."""
    v = values.dropna()
    if len(v) and v.min() > 0 and v.max() / v.min() > 10 ** decades:
        ax.set_yscale("log")


def learning_curves(curves: pd.DataFrame, ax=None, title: str | None = None):
    """One line per trial, coloured by how it ended; a cross where a stopped or errored trial ended."""
    fig, ax = _axis(ax)
    for (_, _), c in curves.groupby(["run", "trial_id"], sort=False):
        status = c["status"].iloc[-1]
        ax.plot(c["iteration"], c["value"], color=STATUS_COLORS.get(status, "tab:gray"), alpha=0.6, lw=1)
    ends = curves[curves["last"] & curves["status"].isin(["stopped", "errored"])]
    for status, e in ends.groupby("status"):
        ax.scatter(e["iteration"], e["value"], marker="x", color=STATUS_COLORS[status], zorder=3, s=25)
    counts = curves.drop_duplicates(["run", "trial_id"])["status"].value_counts()
    handles = [plt.Line2D([], [], color=STATUS_COLORS.get(s, "tab:gray"), label=f"{s} ({n})")
               for s, n in counts.items()]
    ax.legend(handles=handles, frameon=False)
    _log_if_wide(ax, curves["value"])
    ax.set(xlabel="iteration", ylabel="reported value", title=title or "learning curves (x: ended early)")
    return fig


def anytime(agg: pd.DataFrame, x: str = "elapsed_s", ax=None, ylabel: str = "best so far"):
    """Median best-so-far per setup with its interquartile band over seeds."""
    fig, ax = _axis(ax)
    for setup, a in agg.groupby("setup", sort=False):
        line, = ax.step(a[x], a["median"], where="post", label=f"{setup} ({a['runs'].max()} seeds)")
        ax.fill_between(a[x], a["q25"], a["q75"], step="post", alpha=0.2, color=line.get_color())
    _log_if_wide(ax, agg["median"], decades=1)  # best-so-far curves differ most near the end
    ax.set(xlabel=AXES.get(x, x), ylabel=ylabel)
    ax.legend(frameon=False, fontsize="small")
    return fig


def anytime_panels(curves: pd.DataFrame, y: str = "best"):
    """`anytime` against every x axis the curves have (wall time, trial-iterations, CPU- and
    GPU-seconds), side by side, from `orchestrator.analysis.anytime.anytime` curves."""
    axes_names = [a for a in AXES if a in curves]
    fig, axes = plt.subplots(1, len(axes_names), figsize=(4.2 * len(axes_names), 3.6), layout="constrained",
                             sharey=True)
    for ax, x in zip(np.atleast_1d(axes), axes_names):
        anytime(aggregate(curves, x=x, y=y), x=x, ax=ax, ylabel=y)
        if ax is not np.atleast_1d(axes)[-1]:
            ax.get_legend().remove()
    return fig


def ranks(rank_frame: pd.DataFrame, x: str = "elapsed_s", ax=None):
    """Mean rank over time per setup (1 = best)."""
    fig, ax = _axis(ax)
    for setup, r in rank_frame.groupby("setup", sort=False):
        ax.step(r[x], r["mean_rank"], where="post", label=setup)
    n = rank_frame["setup"].nunique()
    ax.set(xlabel=AXES.get(x, x), ylabel="mean rank over seeds (1 = best)", ylim=(n + 0.2, 0.8))
    ax.legend(frameon=False, fontsize="small")
    return fig


def importance(result, ax=None):
    """Horizontal bars of an `orchestrator.analysis.importance.Importance`, titled with what computed it."""
    t = result.table.iloc[::-1]
    fig, ax = _axis(ax, (6, 0.4 * len(t) + 1.2))
    ax.barh(t["param"], t["importance"], color="tab:blue")
    ax.set(xlabel="importance (share)", title=f"{result.evaluator}\n{result.trials} completed trials")
    ax.title.set_fontsize("small")
    return fig


def _scored(trials: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Trials with a score, worst first (so the best are drawn on top)."""
    return trials[trials["score"].notna()].sort_values("score", ascending=mode != "min")


def _encode(col: pd.Series) -> tuple[pd.Series, list[str] | None]:
    """A numeric column as it is; any other as category codes 0..n-1, with the categories."""
    if pd.api.types.is_numeric_dtype(col):
        return col.astype(float), None
    codes = pd.Categorical(col.astype(str))
    return pd.Series(codes.codes, index=col.index, dtype=float), list(codes.categories)


def parallel_coordinates(trials: pd.DataFrame, params: list[str], mode: str, ax=None, top: int = 5):
    """One line per scored trial across its parameters (each axis scaled to its range, on a log
    scale when it spans more than two decades; choices as evenly spaced codes; a gap where a
    conditional parameter was inactive), coloured by score; the `top` best drawn last and thicker."""
    scored = _scored(trials, mode)
    fig, ax = _axis(ax, (1.6 * len(params) + 2, 4))
    if not params or scored.empty:
        ax.text(0.5, 0.5, "no scored trial or no sampled parameter", ha="center", transform=ax.transAxes)
        return fig
    scaled, labels = [], []
    for p in params:
        values, categories = _encode(scored[f"config.{p}"])
        lo, hi = values.min(), values.max()
        log = not categories and lo > 0 and hi / lo > 100  # a log-uniform range, say
        shown = np.log10(values) if log else values
        span = shown.max() - shown.min()
        scaled.append((shown - shown.min()) / span if span > 0 else shown * 0 + 0.5)
        labels.append(f"{p}\n{'/'.join(categories) if categories else f'[{lo:.3g}, {hi:.3g}]'}{' log' if log else ''}")
    matrix = np.column_stack(scaled)
    norm = plt.Normalize(scored["score"].min(), scored["score"].max())
    cmap = plt.get_cmap("viridis_r" if mode == "min" else "viridis")
    for i, (row, score) in enumerate(zip(matrix, scored["score"])):
        best = i >= len(matrix) - top
        ax.plot(range(len(params)), row, color=cmap(norm(score)), lw=2.2 if best else 0.8, alpha=1 if best else 0.5)
    ax.set_xticks(range(len(params)), labels, fontsize="small")
    ax.vlines(range(len(params)), 0, 1, color="black", lw=0.8)
    ax.set_yticks([])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="score")
    ax.set_title(f"parallel coordinates: {len(scored)} scored trials, best {top} thick", fontsize="small")
    return fig


def parallel_coordinates_interactive(trials: pd.DataFrame, params: list[str], mode: str):
    """The same as a plotly figure: drag along an axis to keep only the trials within a range."""
    import plotly.graph_objects as go

    scored = _scored(trials, mode)
    dimensions = []
    for p in params:
        values, categories = _encode(scored[f"config.{p}"])
        extra = {"tickvals": list(range(len(categories))), "ticktext": categories} if categories else {}
        dimensions.append({"label": p, "values": values, **extra})
    dimensions.append({"label": "score", "values": scored["score"]})
    line = {"color": scored["score"], "colorscale": "Viridis", "reversescale": mode == "min", "showscale": True}
    return go.Figure(go.Parcoords(line=line, dimensions=dimensions))


def gpu_hours(per_node: pd.DataFrame, ax=None):
    """GPU-hours per run and node (`orchestrator.analysis.usage.usage(runs, by="node")`), labelled with the
    share of the run's span the node's GPUs were allocated."""
    used = per_node[per_node["gpu_s"] > 0]
    fig, ax = _axis(ax, (7, 0.4 * len(used) + 1.5))
    labels = [f"{r} {n}" for r, n in zip(used["run"], used["node_ip"])]
    bars = ax.barh(labels, used["gpu_hours"], color="tab:green")
    ax.bar_label(bars, [f"{a:.0%} allocated" for a in used["gpu_allocation"]], fontsize="small", padding=3)
    ax.invert_yaxis()
    ax.set(xlabel="GPU-hours (sum of gpus x wall time)", title="GPU-hours per node")
    return fig


def timeline(tl: pd.DataFrame, ax=None, title: str | None = None):
    """A Gantt chart of one run's trials: one row per node and lane, bars coloured by status,
    labelled with GPU ids where trials held GPUs."""
    rows = tl[["node_ip", "lane"]].drop_duplicates().sort_values(["node_ip", "lane"]).reset_index(drop=True)
    row_of = {(n, lane): i for i, (n, lane) in enumerate(zip(rows["node_ip"], rows["lane"]))}
    fig, ax = _axis(ax, (8, 0.35 * len(rows) + 1.5))
    for status, g in tl.groupby("status"):
        y = [row_of[(n, lane)] for n, lane in zip(g["node_ip"], g["lane"])]
        ax.barh(y, g["end_s"] - g["start_s"], left=g["start_s"], height=0.8, label=status,
                color=STATUS_COLORS.get(status, "tab:gray"), edgecolor="white", linewidth=0.5)
    for _, t in tl[tl["gpu_ids"].notna()].iterrows():
        ax.text((t["start_s"] + t["end_s"]) / 2, row_of[(t["node_ip"], t["lane"])], f"gpu {t['gpu_ids']}",
                ha="center", va="center", fontsize="x-small", color="white")
    ax.set_yticks(range(len(rows)), [f"{n} #{lane}" for n, lane in zip(rows["node_ip"], rows["lane"])],
                  fontsize="small")
    ax.invert_yaxis()
    ax.set(xlabel="seconds since the run's first trial started", title=title or "trials per node")
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def predicted_vs_true(true: pd.Series, predicted: pd.Series, classes: list | None = None, ax=None,
                      title: str | None = None):
    """A model's predictions against the truth: a confusion matrix (counts, rows the true class) for
    a classifier (`classes` in order), else a scatter with the diagonal where they would agree."""
    if classes:
        index = {c: i for i, c in enumerate(classes)}
        counts = np.zeros((len(classes), len(classes)), dtype=int)
        for t, p in zip(true, predicted):
            counts[index[t], index[p]] += 1
        fig, ax = _axis(ax, (0.45 * len(classes) + 2.5, 0.4 * len(classes) + 2))
        ax.imshow(counts, cmap="Blues")
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize="small",
                        color="white" if n > counts.max() / 2 else "black")
        ticks = range(len(classes))
        ax.set_xticks(ticks, [str(c) for c in classes], fontsize="small")
        ax.set_yticks(ticks, [str(c) for c in classes], fontsize="small")
        accuracy = np.trace(counts) / max(1, counts.sum())
        ax.set(xlabel="predicted", ylabel="true", title=title or f"test split: accuracy {accuracy:.3f}")
        return fig
    fig, ax = _axis(ax, (5, 5))
    ax.scatter(true, predicted, s=10, alpha=0.6)
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="tab:gray", linewidth=1, linestyle="--")
    rmse = float(np.sqrt(np.mean((np.asarray(true, dtype=float) - np.asarray(predicted, dtype=float)) ** 2)))
    ax.set(xlabel="true", ylabel="predicted", title=title or f"test split: rmse {rmse:.4g}")
    return fig
