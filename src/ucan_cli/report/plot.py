"""``compare.png``: forget effect against retain utility, one point per method configuration.

x = retain NDCG@10 (utility kept; right is better), y = forget Recall@5 (lower is more forgetting).
Rows of one method with several ``--set`` values are joined by a line (a strength curve); the
original is a grey square, the reference a star (where every method wants to be: low y, high
x); equal-forgetting runs are diamonds; a row eval flags as a possible collapse is crossed out in
red; the marker area grows with the row's cost in forward-pass equivalents (square root, so a
100x costlier method is a 10x wider marker). Plotting is optional: matplotlib is the ``ucan-cli[plot]``
extra, imported only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot_available() -> bool:
    """True when matplotlib can be imported (``pip install 'ucan-cli[plot]'``)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def points(document: Mapping[str, Any]) -> dict[str, list[tuple[float, float, float]]]:
    """method -> [(retain NDCG@10, forget R@5, cost)] of its rows that have both metrics, in row
    order (equal-forgetting rows under ``METHOD @ U-CAN's forgetting``). Pure: what ``write_plot`` draws."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for row in document["rows"]:
        m = row.get("metrics") or {}
        x, y = m.get("retain_ndcg@10"), m.get("forget_recall@5")
        if x is None or y is None or row.get("is_reference"):
            continue
        key = row["method"] + (" @ U-CAN's forgetting" if row.get("equal_forgetting") else "")
        out.setdefault(key, []).append((float(x), float(y), float(row.get("forward_equivalents") or 0)))
    return out


def flagged(document: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(retain NDCG@10, forget R@5) of the rows eval flags as a possible collapse (its warnings
    are prefixed with the row's label): drawn crossed out, since a good-looking point there hides
    a blown-up retain perplexity. Pure."""
    out = []
    for row in document["rows"]:
        m = row.get("metrics") or {}
        x, y = m.get("retain_ndcg@10"), m.get("forget_recall@5")
        if x is None or y is None:
            continue
        if any(w.startswith(row["label"] + ": ") and "collapse" in w for w in document.get("warnings", ())):
            out.append((float(x), float(y)))
    return out


def marker_size(cost: float, largest: float) -> float:
    """Marker area in points^2: 30 for a free method, up to 400 for the costliest row."""
    if largest <= 0:
        return 30.0
    return 30.0 + 370.0 * math.sqrt(max(cost, 0.0) / largest)


def write_plot(document: Mapping[str, Any], path: str | Path) -> Path:
    """Draw ``points(document)`` with the original and reference marked; write a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = points(document)
    largest = max((c for pts in series.values() for _, _, c in pts), default=0.0)
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    for name, pts in series.items():
        xs, ys, costs = zip(*pts)
        if len(pts) > 1:
            ax.plot(xs, ys, linewidth=1, alpha=0.6)
        marker = "D" if name.endswith("@ U-CAN's forgetting") else "o"
        ax.scatter(xs, ys, s=[marker_size(c, largest) for c in costs], alpha=0.75, label=name, marker=marker)
    crossed = flagged(document)
    if crossed:
        ax.scatter(*zip(*crossed), marker="x", s=120, color="red", linewidths=2, label="eval flags a possible collapse", zorder=4)
    anchors = document.get("anchors", {})
    for name, marker, colour in (("original", "s", "grey"), ("reference", "*", "black")):
        values = anchors.get(name) or {}
        x, y = values.get("retain_ndcg@10"), values.get("forget_recall@5")
        if x is not None and y is not None:
            ax.scatter([x], [y], marker=marker, s=160, color=colour, label=name, zorder=3)
    ax.set_xlabel("retain NDCG@10 (utility kept, higher is better)")
    ax.set_ylabel("forget Recall@5 (lower is more forgetting)")
    ax.set_title("ucan compare: forgetting against utility (marker area ~ sqrt(cost))")
    ax.grid(True, alpha=0.3)
    legend = ax.legend(fontsize=7, loc="best")
    for handle in getattr(legend, "legend_handles", getattr(legend, "legendHandles", [])):  # one size in the legend
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([40])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["flagged", "marker_size", "plot_available", "points", "write_plot"]
