"""The report's figures, drawn with matplotlib and returned as SVG text.

matplotlib is an optional dependency (the ``report`` extra): :func:`available` says whether it
can be imported, and the report is written with tables only when it cannot. Figures are built
with ``matplotlib.figure.Figure`` directly (no pyplot state, no GUI backend) and saved as SVG
with text kept as text, so the page stays small and its labels can be searched.

Every figure has a title, axis labels with units, and a legend when it shows more than one
series; a model keeps the same colour in every figure.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

INSTALL_HINT = "pip install 'mfspark[report]'  (or: pip install 'matplotlib>=3.7')"
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "mfspark-report",
    "font.family": "DejaVu Sans",
    "font.size": 11,
    "axes.titlesize": 12.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 10,
    "legend.framealpha": 0.85,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
TRAIN_COLOR, TEST_COLOR = "#4c78a8", "#f58518"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def model_colors(models: Sequence[str]) -> dict[str, Any]:
    """One colour per model, stable for a given sorted list of names."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(sorted(models))}


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    # Inline: no XML prolog or DOCTYPE, and no RDF metadata block (it only names matplotlib).
    text = text[text.index("<svg") :]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)


def _draw(build, *args, **kwargs) -> str:
    import matplotlib

    with matplotlib.rc_context(_RC):
        return _svg(build(*args, **kwargs))


def _fmt_rating(v: float) -> str:
    return f"{v:g}"


def _rating_histogram(hist: Sequence[tuple[float, float, int, int]]):
    fig, (ax,) = _figure(8.5, 3.6)
    exact = all(lo == hi for lo, hi, _, _ in hist)
    if exact:
        values = [lo for lo, _, _, _ in hist]
        step = min(np.diff(values)) if len(values) > 1 else 1.0
        x, width = np.array(values), 0.8 * step
        ax.set_xticks(values, [_fmt_rating(v) for v in values])
    else:
        x = np.array([(lo + hi) / 2 for lo, hi, _, _ in hist])
        width = 0.95 * (hist[0][1] - hist[0][0])
    train = np.array([t for _, _, t, _ in hist])
    test = np.array([t for _, _, _, t in hist])
    ax.bar(x, train, width, color=TRAIN_COLOR, label="train")
    ax.bar(x, test, width, bottom=train, color=TEST_COLOR, label="test")
    ax.set_title("Ratings by value")
    ax.set_xlabel("rating (stars)" if exact else "rating (binned)")
    ax.set_ylabel("number of ratings")
    ax.yaxis.set_major_formatter(_thousands())
    ax.legend(loc="upper left")
    return fig


def rating_histogram(hist) -> str:
    return _draw(_rating_histogram, hist)


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:,.0f}")


def log_bins(max_level: int, per_decade: int = 8) -> np.ndarray:
    """Integer bin edges, log-spaced from 1 to past ``max_level`` (no empty integer-free bins)."""
    top = max(1, max_level) + 1
    edges = np.unique(
        np.floor(np.logspace(0, math.log10(top), max(2, int(per_decade * math.log10(top)) + 2)))
    )
    edges = np.unique(np.append(edges, top))
    return edges.astype(np.int64)


def _activity(sides):
    fig, axes = _figure(11, 3.9, ncols=len(sides))
    for ax, act in zip(axes, sides, strict=True):
        noun = act.side
        if act.levels:
            levels = np.array([lv for lv, _ in act.levels])
            counts = np.array([c for _, c in act.levels])
            edges = log_bins(int(levels.max()))
            binned, _ = np.histogram(levels, bins=edges, weights=counts)
            # Bins hold different numbers of integer levels: show the mean per level, so the
            # height does not grow with the bin's width (a power law stays a straight line).
            per_level = binned / np.diff(edges)
            color = TRAIN_COLOR if noun == "users" else TEST_COLOR
            ax.stairs(per_level, edges, fill=True, color=color, alpha=0.85)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.5 * per_level[per_level > 0].min())
            median = act.quantile(0.5)
            ax.axvline(
                median, color="#333333", linestyle="--", linewidth=1.2, label=f"median {median:,}"
            )
            ax.legend(loc="upper right")
        else:
            ax.text(0.5, 0.5, "no train ratings", ha="center", va="center", transform=ax.transAxes)
        what = "User activity" if noun == "users" else "Item popularity"
        ax.set_title(f"{what} ({act.n_active:,} {noun})")
        ax.set_xlabel(f"train ratings per {noun[:-1]} (log scale)")
        ax.set_ylabel(f"{noun} per rating count (log scale)")
    return fig


def activity(users, items) -> str:
    return _draw(_activity, [users, items])


def _history(history: Sequence[dict], colors: dict):
    fig, axes = _figure(11, 4.0, ncols=2)
    models = sorted({h["model"] for h in history})
    for ax, key, title in zip(
        axes, ("train_rmse", "test_rmse"), ("Train RMSE", "Test RMSE (held-out ratings)"), strict=True
    ):
        drawn = False
        for m in models:
            pts = sorted(
                (h["iteration"], h[key]) for h in history if h["model"] == m and h[key] is not None
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3.5, color=colors[m], label=m)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("iteration / sweep")
        ax.set_ylabel("RMSE (rating units)")
        if drawn:
            ax.legend(loc="upper right")
    return fig


def history(rows, colors) -> str:
    return _draw(_history, rows, colors)


def _grouped_bars(ax, groups: Sequence[str], models: Sequence[str], value, colors: dict, labels=None):
    """One bar per (group, model), the models side by side within a group. ``value(m, g)``:
    the bar's height or None; ``labels``: a format for a value label on each bar."""
    x = np.arange(len(groups))
    bar = 0.8 / max(1, len(models))
    for k, m in enumerate(models):
        ys = [value(m, g) for g in groups]
        ys = [np.nan if y is None else y for y in ys]
        bars = ax.bar(x - 0.4 + bar * (k + 0.5), ys, bar, color=colors.get(m, "#333333"), label=m)
        if labels:
            ax.bar_label(bars, labels=["" if np.isnan(y) else labels.format(y) for y in ys], fontsize=8)
    return x


def _segments(summary: Sequence[dict], segments: Sequence[str], n_by_segment: dict, colors: dict):
    models = sorted({r["model"] for r in summary})
    width = max(8.5, min(14.0, 1.1 * len(segments) * max(1.0, len(models) / 2.5) + 2))
    fig, axes = _figure(width, 7.4, nrows=2)
    value = {(r["model"], r["segment"]): r for r in summary}
    for ax, key in zip(axes, ("rmse", "mae"), strict=True):
        x = _grouped_bars(
            ax, segments, models, lambda m, s, key=key: value.get((m, s), {}).get(key), colors
        )
        ax.set_xticks(x, [f"{s}\nn={n_by_segment.get(s, 0):,}" for s in segments], fontsize=9.5)
        ax.set_ylabel(f"{key.upper()} (rating units)")
        ax.set_title(f"Test {key.upper()} by segment (lower is better)")
        ax.legend(loc="upper left", ncols=min(len(models), 4), bbox_to_anchor=(0, 1), fontsize=9.5)
        ymax = np.nanmax([r[key] for r in summary if r[key] is not None] or [1.0])
        ax.set_ylim(0, ymax * 1.22)
    axes[-1].set_xlabel("test segment (n = held-out ratings in it)")
    return fig


def segments(summary, segment_order, n_by_segment, colors) -> str:
    return _draw(_segments, summary, segment_order, n_by_segment, colors)


def _calibration(calibs, colors: dict):
    fig, (ax,) = _figure(6.2, 5.2)
    ax.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1, label="perfect calibration")
    for k, c in enumerate(calibs):
        xs = [nom for _, nom, _ in c.coverage]
        ys = [obs for _, _, obs in c.coverage]
        ax.plot(xs, ys, marker="o", color=colors.get(c.model, "#333333"), label=c.model)
        if k:
            continue  # the z labels once: every model has its points at the same nominal values
        last = -1.0
        for z, nom, obs in c.coverage:
            if nom - last < 0.06:  # near 100% the points crowd: label only those apart
                continue
            last = nom
            ax.annotate(
                f"±{z:g} sd", (nom, obs), textcoords="offset points", xytext=(6, -12), fontsize=8.5
            )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_title("Predictive intervals: coverage")
    ax.set_xlabel("nominal coverage of prediction ± z·sd (normal)")
    ax.set_ylabel("share of test ratings inside")
    ax.legend(loc="upper left")
    return fig


def calibration(calibs, colors) -> str:
    return _draw(_calibration, calibs, colors)


def _ranking(rows: Sequence[dict], colors: dict):
    metrics = sorted({r["metric"] for r in rows})
    models = sorted({r["model"] for r in rows})
    ks = sorted({r["k"] for r in rows})
    if len(ks) == 1:  # one list length: a grouped bar chart, metrics side by side
        fig, axes = _figure(max(8.5, 1.2 * len(metrics) * max(1.0, len(models) / 2.5) + 2), 4.2)
        ax = axes[0]
        value = {(r["model"], r["metric"]): r["value"] for r in rows}
        x = _grouped_bars(ax, metrics, models, lambda m, g: value.get((m, g)), colors, labels="{:.2f}")
        ax.set_xticks(x, [f"{metric}@{ks[0]}" for metric in metrics])
        ax.set_ylabel("value (0 to 1)")
        ax.set_title(f"Ranking metrics of the top-{ks[0]} lists (higher is better)")
        finite = [r["value"] for r in rows if r["value"] is not None]
        ax.set_ylim(0, max(finite or [1.0]) * 1.2)
        ax.legend(loc="upper left", ncols=min(len(models), 4), fontsize=9.5)
        return fig
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = _figure(3.9 * ncols + 0.6, 3.5 * nrows, ncols=ncols, nrows=nrows)
    for ax, metric in zip(axes, metrics, strict=False):
        for m in models:
            pts = sorted((r["k"], r["value"]) for r in rows if r["model"] == m and r["metric"] == metric)
            pts = [(k, v) for k, v in pts if v is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", color=colors.get(m, "#333333"), label=m)
        ax.set_title(metric)
        ax.set_xlabel("k (list length)")
        ax.set_ylabel(f"{metric}@k")
        ks_metric = sorted({r["k"] for r in rows if r["metric"] == metric})
        ax.set_xticks(ks_metric, [str(k) for k in ks_metric])
        if ax is axes[0]:
            ax.legend(loc="best", fontsize=9)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return fig


def ranking(rows, colors) -> str:
    return _draw(_ranking, rows, colors)


def _benchmark(rows: Sequence[dict]):
    fig, axes = _figure(11, 4.0, ncols=2)
    systems = [r["system"] for r in rows]
    x = np.arange(len(systems))
    from matplotlib import colormaps

    palette = [colormaps["Set2"](i) for i in range(len(systems))]
    for ax, key, title, label in (
        (
            axes[0],
            "seconds_per_iteration",
            "Time per iteration (lower is better)",
            "seconds per iteration",
        ),
        (axes[1], "test_rmse", "Test RMSE (lower is better)", "RMSE (rating units)"),
    ):
        ys = [np.nan if r.get(key) is None else r[key] for r in rows]
        bars = ax.bar(x, ys, 0.6, color=palette)
        ax.bar_label(
            bars, labels=[("" if np.isnan(y) else f"{y:.3g}") for y in ys], padding=2, fontsize=9.5
        )
        ax.set_xticks(x, systems)
        ax.set_title(title)
        ax.set_xlabel("system")
        ax.set_ylabel(label)
        finite = [y for y in ys if not np.isnan(y)]
        ax.set_ylim(0, (max(finite) if finite else 1.0) * 1.25)
    for key, style, name in (
        ("planted_truth_test_rmse", "--", "planted truth"),
        ("oracle_floor_test_rmse", ":", "oracle floor"),
    ):
        values = [r.get(key) for r in rows if r.get(key) is not None]
        if values:
            axes[1].axhline(values[0], color="#333333", linestyle=style, linewidth=1.2, label=name)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(loc="upper right")
    return fig


def benchmark(rows) -> str:
    return _draw(_benchmark, rows)
