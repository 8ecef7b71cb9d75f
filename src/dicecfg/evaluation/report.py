"""Presenting `dice eval` results: a Markdown table and a metric-versus-NFE plot."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..sampling.methods import TABLE

log = logging.getLogger(__name__)

# (result key, column title, format); columns appear only when some row has the metric
COLUMNS = (
    ("nfe", "NFE", "{:d}"),
    ("seconds_per_image", "s/img", "{:.3f}"),
    ("align_all", "all-correct", "{:.3f}"),
    ("align_count", "count", "{:.3f}"),
    ("align_shape", "shape", "{:.3f}"),
    ("align_colour", "colour", "{:.3f}"),
    ("align_size", "size", "{:.3f}"),
    ("align_relation", "relation", "{:.3f}"),
    ("align_background", "bg", "{:.3f}"),
    ("fd_oracle", "FD (oracle)", "{:.2f}"),
    ("psnr", "PSNR vs CFG", "{:.2f}"),
    ("ssim", "SSIM vs CFG", "{:.3f}"),
    ("fid", "FID", "{:.2f}"),
    ("clip_score", "CLIP", "{:.2f}"),
    ("aesthetic", "aesthetic", "{:.2f}"),
)
# metric for the plot (the first one present) and its axis title
PLOT_METRICS = (
    ("align_all", "all-correct (oracle)"),
    ("fid", "FID"),
    ("clip_score", "CLIP score"),
    ("ssim", "SSIM vs CFG"),
)


def setting(row: dict[str, Any]) -> str:
    """Short text for a row's method setting, e.g. ``w=5``, ``alpha=1 (mini-1a2b3c4d)``."""
    p = row["params"]
    parts = [f"{m.short}={p[m.knob]:g}" for m in TABLE.values() if m.knob in p]
    if "sharpener" in p:
        parts.append(f"({p['sharpener']})")
    if "negative_prompt" in p:
        parts.append(f"neg: {p['negative_prompt']!r}")
    return " ".join(parts) or "-"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    head = ["method", "setting", "steps"] + [title for _, title, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], setting(r), str(r["steps"])]
        cells += [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_nfe(rows: Sequence[dict[str, Any]], path: str | Path, metric: str | None = None) -> Path | None:
    """Metric versus NFE: CFG as one curve per w over the step counts, other methods as points."""
    metric, title = next(
        ((k, t) for k, t in PLOT_METRICS if metric in (None, k) and any(r.get(k) is not None for r in rows)),
        (None, None),
    )
    if metric is None:
        log.info("no metric to plot")
        return None
    plt = pyplot()
    if plt is None:
        return None

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    curves: dict[str, list[tuple[int, float]]] = {}
    markers = {"unguided": "x", "scaling": "s", "dice": "*", "cfg": "o"}
    for r in rows:
        if r.get(metric) is None:
            continue
        name = f"{r['label']} {setting(r)}"
        if r["method"] == "cfg":
            curves.setdefault(name, []).append((r["nfe"], r[metric]))
        else:
            ax.scatter(
                r["nfe"],
                r[metric],
                marker=markers.get(r["method"], "o"),
                s=80 if r["method"] == "dice" else 40,
                label=name,
                zorder=3,
            )
    for name, pts in curves.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=name)
    ax.set_xlabel("network evaluations per image (NFE)")
    ax.set_ylabel(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install 'dicecfg[eval]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
