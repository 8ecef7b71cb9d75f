"""Oracle scoring speed, old code against new, in one process (CPU): the shapes oracle of a given commit
against the package's, and the shapes-fine oracle, on the same renders.

    python benchmarks/oracle_speed/ab.py [--commit 6ae54e3] [--n 2048] [--repeat 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def old_oracle(commit: str):
    """The shapes oracle as it was at ``commit`` (its relative imports pointed at today's package)."""
    src = subprocess.run(
        ["git", "show", f"{commit}:src/dicecfg/world/oracle.py"], capture_output=True, text=True, check=True
    ).stdout
    src = src.replace("from .captions import", "from dicecfg.world.captions import")
    src = src.replace("from .scenes import", "from dicecfg.world.scenes import")
    path = Path(tempfile.mkdtemp()) / "old_oracle.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_oracle", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_oracle"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Oracle()


def best_rate(oracle, images, specs, repeat: int) -> tuple[float, dict]:
    best, scores = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        scores = oracle.score(images, specs)
        best = min(best, time.perf_counter() - t)
    return len(images) / best, {k: float(v.mean()) for k, v in scores.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--commit", default="6ae54e3")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    from dicecfg.world import Oracle, render, validation_set
    from dicecfg.world.fine import render as fine_render
    from dicecfg.world.fine import validation_set as fine_validation
    from dicecfg.world.fine.oracle import FineOracle

    items = validation_set(a.n)
    images, specs = render([it.scene for it in items]), [it.spec for it in items]
    fine = fine_validation(a.n)
    fine_images, fine_specs = fine_render([it.scene for it in fine]), [it.spec for it in fine]
    fine_oracle = FineOracle()
    fine_oracle.score(fine_images[:8], fine_specs[:8])  # its prototypes are measured once per process
    rows = {
        f"shapes oracle at {a.commit}": best_rate(old_oracle(a.commit), images, specs, a.repeat),
        "shapes oracle (this tree)": best_rate(Oracle(), images, specs, a.repeat),
        "shapes-fine oracle (this tree)": best_rate(fine_oracle, fine_images, fine_specs, a.repeat),
    }
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                      "numpy": np.__version__, "n": a.n, "repeat": a.repeat}))  # fmt: skip
    print(f"| oracle | images/s (best of {a.repeat}) | all-correct on clean renders |")
    print("|---|---|---|")
    for name, (rate, acc) in rows.items():
        print(f"| {name} | {rate:.0f} | {acc['all']:.4f} |")


if __name__ == "__main__":
    main()
