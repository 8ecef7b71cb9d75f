"""The Markdown table `dice bench` prints (and BENCHMARKS.md quotes), from the rows of ``run_bench``."""

from __future__ import annotations

from typing import Any


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The short table `dice bench` prints last (with fast-path columns when any row has them)."""
    cols = ["model", "device", "dtype", "batch", "steps", "CFG ms", "DICE ms", "CFG/DICE", "sharpener %"]
    cols.append("decode ms")
    fast = any("fast_dice_ms" in r for r in rows)
    if fast:
        cols += ["fast CFG ms", "fast DICE ms", "fast unguided ms", "eager CFG / fast DICE", "capture ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["name"], r["device"], r["dtype"], r["batch"], r["steps"]]
        if "error" in r:
            cells += [r["error"]] + [""] * (len(cols) - len(cells) - 1)
        else:
            dec = f"{r['decode_ms']:.1f}" if r.get("decode_ms") is not None else "-"
            cells += [f"{r['cfg_ms']:.1f}", f"{r['dice_ms']:.1f}", f"{r['ratio']:.3f}"]
            cells += [f"{r['sharpener_pct']:.2f}", dec]
            if fast and "fast_dice_ms" in r:
                capture = sum(v for k, v in r.items() if k.endswith("_first_ms"))
                cells += [
                    f"{r['fast_cfg_ms']:.1f}",
                    f"{r['fast_dice_ms']:.1f}",
                    f"{r['fast_unguided_ms']:.1f}",
                ]
                cells += [f"{r['speedup_vs_eager_cfg']:.3f}", f"{capture:.0f}"]
            elif fast:
                cells += [""] * 5
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
