"""Time the mini model's data stage (render_shards) on 50,000 shapes-fine renders in two shards of 25,000.

python benchmarks/second_world/render_speed.py OUT_FOLDER [WORKERS]
"""

import sys
import time
from pathlib import Path

from dicecfg.minimodel.data import render_shards

if __name__ == "__main__":
    out = Path(sys.argv[1])
    t = time.monotonic()
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    for row in render_shards(out, 50000, 25000, 1024, 0, workers, None, "shapes-fine"):
        print(row, flush=True)
    print("total", round(time.monotonic() - t, 1))
