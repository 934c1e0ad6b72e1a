"""The plot of a benchmark run: accuracy against labeled images per class, one panel per dataset x backbone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.run import ANCHORS, PROBE, _oracles, _ran, summarise
from store.atomic import atomic_write


def plot(records: list[dict], path: Path, columns: int = 3) -> None:
    """Accuracy vs shots, one line per method, one panel per dataset × backbone (``columns`` panels a row).

    A method keeps its colour in every panel and one legend below the panels names them all, so no legend hides a
    line; anchors (plain scikit-learn) are dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, oracles = summarise(records), _oracles(records)
    records = _ran(records)
    panels = list(dict.fromkeys((r["dataset"], r["backbone"]) for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    palette = plt.cm.tab20(np.linspace(0, 1, 20))
    colour = {m: palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i, m in enumerate(methods)}  # distinct for 20 lines
    n_cols = min(columns, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.5 * n_cols, 4.2 * n_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = {}
    for ax, (dataset, backbone) in zip(axes.flat, panels):
        shots = sorted({k[3] for k in summary if k[:2] == (dataset, backbone)})
        if len(shots) == 1:  # one label count: a line through one point says nothing; bars, one per method
            _bars(ax, summary, (dataset, backbone), methods, colour, handles)
        else:
            _lines(ax, summary, (dataset, backbone), methods, colour, handles, shots)
        if (dataset, backbone) in oracles:
            value = 100 * oracles[(dataset, backbone)]["accuracy"]
            line = ax.axvline if len(shots) == 1 else ax.axhline
            handles["oracle"] = line(value, color="grey", linestyle=":", label="oracle")
        title = f"{dataset}\n{backbone.replace('+', ' + ')}"
        ax.set_title(title + (f" ({shots[0]} labels per class)" if len(shots) == 1 else ""), fontsize=9, wrap=True)
        ax.grid(alpha=0.3)
    fig.tight_layout(h_pad=1.5)
    # below the panels, as wide as they are; the tight bounding box grows the image to hold it
    names = [m for m in methods if m in handles] + (["oracle"] if "oracle" in handles else [])
    fig.legend([handles[m] for m in names], [f"oracle: {PROBE} on every train label" if m == "oracle" else m
                                            for m in names],
               loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(2 * n_cols, 4, max(1, len(handles))),
               fontsize=8, frameon=False)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _lines(ax, summary: dict, panel: tuple, methods: list, colour: dict, handles: dict, shots: list) -> None:
    """Accuracy vs label count, one line per method; each method's points are nudged sideways by a few percent of
    the (log) x position, so methods with equal scores stay visible side by side instead of hiding each other."""
    for j, m in enumerate(methods):
        pts = sorted((k[3], v) for k, v in summary.items() if k[:3] == (*panel, m))
        if not pts:
            continue
        nudge = np.exp(0.012 * (j - (len(methods) - 1) / 2))
        x = [p[0] * nudge if p[0] else 0.015 * (j - (len(methods) - 1) / 2) for p in pts]
        means = np.array([p[1]["accuracy_mean"] for p in pts]) * 100
        stds = np.array([p[1]["accuracy_std"] for p in pts]) * 100
        handles[m] = ax.errorbar(x, means, yerr=stds, label=m, marker="o", markersize=4, capsize=2,
                                 linestyle="--" if m in ANCHORS else "-", color=colour[m])
    ax.set_xscale("symlog", linthresh=1)  # log-like spacing of 1/5/15 shots that also shows 0 shots
    ax.set_xticks(shots)
    from matplotlib.ticker import ScalarFormatter

    ax.get_xaxis().set_major_formatter(ScalarFormatter())
    ax.set_xlabel("labeled images per class")
    ax.set_ylabel("test accuracy (%)")


def _bars(ax, summary: dict, panel: tuple, methods: list, colour: dict, handles: dict) -> None:
    """Accuracy of each method at the panel's one label count, as horizontal bars with their std."""
    shown = [(m, v) for m in methods for k, v in summary.items() if k[:3] == (*panel, m)]
    for i, (m, v) in enumerate(shown):
        handles[m] = ax.barh(i, 100 * v["accuracy_mean"], xerr=100 * v["accuracy_std"], color=colour[m],
                             hatch="//" if m in ANCHORS else None, capsize=2, label=m)
    ax.set_yticks(range(len(shown)), [m for m, _ in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%)")


def strategy_curves(summary: dict, strategies: dict[str, list[str]], path: Path, xlabel: str) -> None:
    """Accuracy curves of labeling strategies, one panel per dataset: ``summary[(dataset, strategy, x)]`` holds the
    ``mean`` and ``std`` over seeds; ``strategies`` maps each dataset to its strategies (random dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(strategies), figsize=(5.5 * len(strategies), 4.2), squeeze=False)
    for ax, (dataset, names) in zip(axes[0], strategies.items()):
        for strategy in names:
            pts = sorted((k[2], v) for k, v in summary.items() if k[:2] == (dataset, strategy))
            mean = np.array([p[1]["mean"] for p in pts]) * 100
            std = np.array([p[1]["std"] for p in pts]) * 100
            ax.errorbar([p[0] for p in pts], mean, yerr=std, marker="o", capsize=3, label=strategy,
                        linestyle="--" if strategy == "random" else "-")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
