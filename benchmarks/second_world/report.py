"""Markdown of the realism study of both worlds, side by side (realism.py's JSON files, as a GPU call left them).

    python benchmarks/second_world/report.py results/realism_shapes.json results/realism_fine.json

Prints the acceptance criteria of each world in one table, then each world's rows (realism.table) with what each
row fixes and breaks against unguided sampling per oracle key.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path


def _realism():
    path = Path(__file__).with_name("realism.py")
    spec = importlib.util.spec_from_file_location("realism_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def criteria_table(results: list[dict]) -> str:
    lines = [
        "| world | card | prompts x seed sets | w* | unguided | full CFG | gain | first 2 steps recovered | "
        "steps for 95% | rule 1 (<= half at 10%) | rule 2 (95% needs >= 25%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows = {x["row"]: x for x in r["rows"]}
        c = r["criteria"]
        full = rows[f"cfg w={r['w_star']:g}"]
        need = c["steps_for_95pct"]
        lines.append(
            f"| {r['world']} | {r['card']} | {r['n_prompts']} x {len(r['seed_sets'])} | {r['w_star']:g} | "
            f"{rows['unguided']['all']:.3f} | {full['all']:.3f} | {c['gain']:+.3f} | "
            f"{c['first_10pct_recovered']:.2f} | {need if need is not None else '> 10'} of {r['steps']} | "
            f"{'holds' if c['rule_1_first_10pct_at_most_half'] else 'fails'} | "
            f"{'holds' if c['rule_2_95pct_needs_25pct'] else 'fails'} |"
        )
    return "\n".join(lines)


def changes_table(result: dict) -> str:
    """Per oracle key: each row's accuracy minus unguided sampling's (what it fixes, + , and breaks, -)."""
    base = result["rows"][0]
    keys = [k for k in base if k not in ("row", "method", "nfe", "all", "se", "fd", "seconds", "recovered")]
    lines = ["| row | NFE | " + " | ".join(keys) + " |", "|" + "---|" * (2 + len(keys))]
    for r in result["rows"][1:]:
        cells = [f"{r[k] - base[k]:+.3f}" for k in keys]
        lines.append(f"| {r['row']} | {r['nfe']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="realism.py --json files (one per world)")
    a = p.parse_args(argv)
    results = [json.loads(Path(f).read_text()) for f in a.json]
    partial = [f for f, r in zip(a.json, results, strict=True) if r.get("partial") or "criteria" not in r]
    if partial:
        raise SystemExit(
            f"not finished (a cut-off run: run realism.py again with the same --json): {partial}"
        )
    table = _realism().table
    parts = ["## Acceptance", criteria_table(results)]
    for r in results:
        parts += [
            f"## {r['world']}: every row",
            table(r),
            f"## {r['world']}: against unguided",
            changes_table(r),
        ]
    text = "\n\n".join(parts) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
