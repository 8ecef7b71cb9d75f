"""Every table and plot of the evaluation commands: `dice eval` (method x metric table, metric versus NFE),
`dice analyze` (where the edit lands), `dice demo` and `dice bench`, on one Markdown table builder."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def markdown(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: the header, the separator line and one line per row (cells shown with ``str``)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# (result key, column title, format); columns appear only when some row has the metric
COLUMNS = (
    ("nfe", "NFE", "{}"),  # measured: a mean where it differs per image (Adaptive Guidance)
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
    """Short text for a row's method settings, e.g. ``w=5 on [0,0.1)``, ``alpha=1 (mini-1a2b3c4d)``."""
    p = row["params"]
    parts = [row["setting"]] if row.get("setting", "-") != "-" else []
    if "sharpener" in p:
        parts.append(f"({p['sharpener']})")
    if "negative_prompt" in p:
        parts.append(f"neg: {p['negative_prompt']!r}")
    return " ".join(parts) or "-"


def eval_table(rows: Sequence[dict[str, Any]]) -> str:
    """The `dice eval` table: one line per row, a column per metric that some row has."""
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    head = ["method", "setting", "steps"] + [title for _, title, _ in cols]
    return markdown(
        head,
        (
            [r["label"], setting(r), str(r["steps"])]
            + [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in cols]
            for r in rows
        ),
    )


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

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    curves: dict[str, list[tuple[int, float]]] = {}
    markers = {"unguided": "x", "scaling": "s", "dice": "*", "cfg": "o", "ag": "^"}
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


def analysis_summary(stats: dict[str, Any]) -> str:
    """The `dice analyze` table (one line per token group) and a one-line reading of the paper's claim."""
    head = [
        "group",
        "tokens",
        "share of positions",
        "share of squared edit",
        "mean edit norm",
        "edit / token norm",
        "cos(c, c')",
    ]
    groups = stats["groups"]  # in token order: sos, words, eos, padding
    table = markdown(
        head,
        (
            [
                name,
                g["tokens"],
                f"{g['position_share']:.3f}",
                f"{g['edit_share']:.3f}",
                f"{g['edit_norm']:.4g}",
            ]
            + [f"{g['relative_edit']:.4g}", f"{g['cosine']:.4f}"]
            for name, g in groups.items()
        ),
    )
    tail = sum(groups[k]["edit_share"] for k in ("eos", "padding") if k in groups)
    tail_pos = sum(groups[k]["position_share"] for k in ("eos", "padding") if k in groups)
    words = groups.get("words", {})

    def rms(names: tuple[str, ...]) -> float:  # root-mean-square per-token edit over some groups
        sq, n = (sum(groups[k][f] for k in names if k in groups) for f in ("sq_edit", "tokens"))
        return (sq / n) ** 0.5 if n else float("nan")

    ratio = rms(("eos", "padding")) / rms(("words",)) if rms(("words",)) > 0 else float("inf")
    return table + (
        "\n\n"
        f"End-of-text and padding positions hold {tail:.1%} of the squared edit on {tail_pos:.1%} of the "
        f"positions; their per-token edit (RMS) is {ratio:.2f}x that of word tokens, whose mean "
        f"cos(c, c') is {words.get('cosine', float('nan')):.4f} ({stats['n_prompts']} prompts, "
        f"alpha={stats['alpha']:g})."
    )


def plot_analysis(stats: dict[str, Any], path: str | Path) -> Path:
    """Mean edit norm per position (left) and squared-edit share vs position share per group (right)."""
    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=120, gridspec_kw={"width_ratios": [2, 1]})
    a.bar(range(len(stats["per_position"]["edit_norm"])), stats["per_position"]["edit_norm"], width=1.0)
    a.set_xlabel("token position")
    a.set_ylabel("mean |c' - c|")
    names = list(stats["groups"])
    x = np.arange(len(names))
    b.bar(x - 0.2, [stats["groups"][n]["position_share"] for n in names], 0.4, label="positions")
    b.bar(x + 0.2, [stats["groups"][n]["edit_share"] for n in names], 0.4, label="squared edit")
    b.set_xticks(x, names)
    b.set_ylabel("share")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


DEMO_NAMES = {"unguided": "unguided", "cfg": "CFG", "peer": "CFG", "dice": "DICE"}
DEMO_HOW = {  # what a method's network evaluations are, for the demo's summary
    "unguided": "one pass per step, no guidance",
    "cfg": "two passes per step (prompt and empty prompt)",
    "peer": "two passes on the first steps, where guidance acts, then the prompt alone (a training-free peer)",
    "dice": "one pass per step on the prompt embedding the sharpener edited once",
}
# `dice demo`'s "where to go next", by command (only commands this `dice` has are printed)
NEXT_STEPS = {
    "eval": "dice eval --limit 512 --out runs/eval-mini: every method and metric on all 512 held-out prompts",
    "serve": "dice serve: your own prompts in the browser, unguided, CFG, its cheap peer and DICE side by side",
    "train": "dice train --prompts FILE --out runs/mine: distil a sharpener of your own (README: "
    "'With real Stable Diffusion 1.5 weights')",
}
GREEN, RED = (20, 150, 60), (215, 40, 40)


def demo_name(m: dict[str, Any]) -> str:
    """A demo row's method and setting, e.g. ``CFG w=5``."""
    return f"{DEMO_NAMES.get(m['method'], m['method'])} {setting(m)}".removesuffix(" -")


def demo_rate(m: dict[str, Any]) -> str:
    """All-correct with its standard error and count, e.g. ``0.875 ± 0.048 (42/48)``."""
    return f"{m['align_all']:.3f} ± {m['stderr']:.3f} ({sum(m['correct'])}/{len(m['correct'])})"


def demo_table(summary: dict[str, Any]) -> str:
    """The `dice demo` table: one line per method."""
    return markdown(
        ["method", "NFE", "s / image", "all-correct ± SE", "vs unguided (fixed, broken)"],
        (
            [demo_name(m), m["nfe"], f"{m['seconds_per_image']:.3f}", demo_rate(m)]
            + [
                f"{v['diff']:+.3f} ± {v['stderr']:.3f} ({v['fixed']}, {v['broken']})"
                if (v := m.get("vs_unguided"))
                else "-"
            ]
            for m in summary["methods"]
        ),
    )


def demo_summary(summary: dict[str, Any], commands: Collection[str] = NEXT_STEPS) -> str:
    """What the demo showed, in numbers, and where to go next (``commands``: those that exist)."""
    n, rows = len(summary["prompts"]), summary["methods"]
    lines = [f"What you just saw: {summary['rule']}, every method on the same prompts and seeds "
             f"(`{summary['eval_command']}` gives the same numbers)."]  # fmt: skip
    for m in rows:
        line = f"- {demo_name(m)}: {sum(m['correct'])} of {n} images right by the exact oracle"
        if v := m.get("vs_unguided"):
            noise = ", within noise" if abs(v["diff"]) < 2 * v["stderr"] or v["stderr"] == 0 else ""
            line += (
                f" ({v['diff']:+.3f} ± {v['stderr']:.3f} against unguided{noise}: it fixed {v['fixed']} "
                f"and broke {v['broken']})"
            )
        lines.append(f"{line}; {m['nfe']} network evaluations per image: {DEMO_HOW.get(m['method'], '')}.")
    by = {m["method"]: m for m in rows}
    lines.append(
        f"- After a warm-up, timed alike: CFG takes {summary['cfg_dice_time_ratio']:.2f}x DICE's wall time per "
        f"image here ({by['cfg']['seconds_per_image']:.3f} vs {by['dice']['seconds_per_image']:.3f} s)."
    )
    if "peer" in by:
        p, d = by["peer"], by["dice"]
        lines.append(
            f"- The training-free peer ({demo_name(p)}, {p['nfe']} NFE) against DICE ({d['nfe']} NFE): "
            f"{p['align_all'] - d['align_all']:+.3f} all-correct, {p['seconds_per_image'] / d['seconds_per_image']:.2f}x "
            "DICE's wall time; BENCHMARKS.md has both on all held-out prompts."
        )
    lines.append(
        f"- At {n} prompts a difference under two standard errors is noise"
        + (f"; all 512 held-out prompts shrink the error {(512 / n) ** 0.5:.1f}x." if n < 512 else ".")
    )
    lines.append(f"Grid: {summary['grid']} ({len(summary['shown'])} of the {n} prompts). Next:")
    lines += [f"  {next_step(name, summary['eval_command'])}" for name in NEXT_STEPS if name in commands]
    return "\n".join(lines)


def next_step(name: str, eval_command: str) -> str:
    """A "where to go next" line; `dice eval`'s names the demo's model when the demo's command does."""
    text = NEXT_STEPS[name]
    if name == "eval" and (model := re.search(r" --model (\S+)", eval_command)):
        text = text.replace("dice eval ", f"dice eval --model {model[1]} ", 1)
        text = text.replace("runs/eval-mini", f"runs/eval-{Path(model[1]).name}", 1)
    return text


def demo_grid(summary: dict[str, Any], images: dict[str, np.ndarray]):
    """The demo's picture: a column per shown prompt (its text above), a row per method (method, NFE, s/img,
    all-correct over every prompt at left), each tile framed green or red by the oracle's verdict, with the
    attributes it got wrong below."""
    from ..sampling.grid import annotated_grid

    n, rows, shown = len(summary["prompts"]), summary["methods"], summary["shown"]
    differ = sum(len({m["correct"][i] for m in rows}) > 1 for i in shown)
    job = summary["job"]
    title = (
        f"dice demo: {', '.join(demo_name(m) for m in rows)}; {job['steps']} steps; the same prompt and seed down "
        "each column. Frame: the exact oracle of the shapes world (green: the image shows what the prompt says; "
        "red: it does not, the wrong attributes below). "
        f"Showing {len(shown)} of {n} prompts ({summary['rule']}): {differ} of the {summary['disagree']} "
        f"prompts on which the methods disagree, then {len(shown) - differ} on which they agree. Rates at left: "
        f"over all {n} prompts, ± one standard error. CFG / DICE wall time: {summary['cfg_dice_time_ratio']:.2f}x."
    )
    return annotated_grid(
        [[images[m["method"]][i] for i in shown] for m in rows],
        row_labels=[
            f"{demo_name(m)}\n{m['nfe']} NFE, {m['seconds_per_image']:.2f} s/img\nall-correct:\n{demo_rate(m)}"
            for m in rows
        ],
        col_labels=[f"#{i + 1} {summary['prompts'][i]}" for i in shown],
        frames=[[GREEN if m["correct"][i] else RED for i in shown] for m in rows],
        notes=[
            ["ok" if m["correct"][i] else "wrong: " + ", ".join(m["failed"][i]) for i in shown] for m in rows
        ],
        title=title,
        label_width=175,
    )


def bench_table(rows: list[dict[str, Any]]) -> str:
    """The short table `dice bench` prints last (its columns: ``bench.speed.TABLE``, beside the row they show)."""
    from ..bench.speed import bench_cells

    return markdown(*bench_cells(rows))


def ceiling_table(rows: Sequence[dict[str, Any]]) -> str:
    """The `dice ceiling` table: per row NFE, held-out distillation loss and, on the shapes world, the oracle;
    then the CFG rows the optimum is measured against (``ceiling_comparison``)."""
    keys = [k for k in ("all", "count", "shape", "colour", "size", "relation", "background") if k in rows[0]]
    body = (
        [r["row"], r["nfe"], "-" if r["eval_loss"] is None else f"{r['eval_loss']:.2f}"]
        + [f"{r[k]:.3f}" for k in keys]
        for r in rows
    )
    table = markdown(
        ["row", "NFE", "held-out loss", *(k if k != "all" else "all-correct" for k in keys)], body
    )
    lines = ceiling_comparison_text(ceiling_comparison(rows))
    return table + ("\n\n" + "\n".join(lines) if lines else "")


CHEAP_NFE = 1.25  # a cheap CFG row costs at most this times the optimum's NFE (25 at 20 steps)


def ceiling_comparison(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The CFG rows (names starting with ``cfg``) that the optimum of `dice ceiling` is measured against: the
    best by oracle all-correct at the optimum's NFE or less (``same_nfe``) and at most ``CHEAP_NFE`` times it
    (``cheap_nfe``: 25 NFE at 20 steps); a tie goes to the fewer NFE. Each entry holds its NFE ``limit`` and the
    chosen ``row``, ``nfe``, ``all`` (``row`` None: no CFG row within the limit). Without oracle scores
    (prompts outside a world's grammar) rows are not ranked: ``scored`` is False. {} without an optimum row."""
    opt = next((r for r in rows if r["row"] == "optimum"), None)
    if opt is None:
        return {}
    scored = opt.get("all") is not None
    out: dict[str, Any] = {"optimum_nfe": opt["nfe"], "optimum_all": opt.get("all"), "scored": scored}
    for key, limit in (("same_nfe", opt["nfe"]), ("cheap_nfe", int(opt["nfe"] * CHEAP_NFE))):
        peers = [r for r in rows if r["row"].startswith("cfg") and r["nfe"] <= limit]
        best = max(peers, key=lambda r: (r["all"], -r["nfe"]), default=None) if scored else None
        out[key] = {"limit": limit, "row": None} | (
            {"row": best["row"], "nfe": best["nfe"], "all": best["all"]} if best else {}
        )
    return out


def ceiling_comparison_text(c: dict[str, Any]) -> list[str]:
    """``ceiling_comparison`` in sentences, for ceiling.md and the command's output."""
    if not c:
        return []
    if not c["scored"]:
        return [
            "No oracle scores (the prompts are not in a world's grammar): the CFG rows are not ranked here; "
            "compare the held-out loss and grid.png."
        ]
    lines = []
    for key, what in (
        ("same_nfe", "the optimum's NFE or less"),
        ("cheap_nfe", f"at most {CHEAP_NFE - 1:.0%} more NFE"),
    ):
        e = c[key]
        head = f"Best CFG row at <= {e['limit']} NFE ({what}): "
        if e["row"] is None:
            lines.append(head + "none (every CFG row costs more).")
        else:
            gap = c["optimum_all"] - e["all"]
            lines.append(
                head + f"{e['row']} ({e['nfe']} NFE), all-correct {e['all']:.3f}; the optimum "
                f"({c['optimum_nfe']} NFE) {c['optimum_all']:.3f}, {gap:+.3f} against it."
            )
    return lines


def pyplot():
    """matplotlib.pyplot on the Agg backend (matplotlib is a dependency: plots need no extra install)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
