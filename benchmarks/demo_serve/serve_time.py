"""Time `dice serve` on the shipped mini model: start until the page answers, then /compare calls.

    python benchmarks/demo_serve/serve_time.py [--port 7911] [--calls 6]

Numbers are in docs/app.md ("Numbers"). Needs the app extra (pip install -e ".[app]").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request

from gradio_client import Client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=7911)
    ap.add_argument("--calls", type=int, default=6)
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}/"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "dicecfg.cli", "-q", "serve", "--port", str(args.port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"dice serve exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        print(f"start until the page answers: {time.perf_counter() - t0:.1f} s")
        client, times = Client(url, verbose=False), []
        for seed in range(args.calls):
            t = time.perf_counter()
            client.predict(
                "a large red circle below a small blue square", "", seed, 20, 5, 1, api_name="/compare"
            )
            times.append(time.perf_counter() - t)
        shown = ", ".join(f"{x:.2f}" for x in times)
        print(
            f"/compare at 20 steps: median {statistics.median(times):.2f} s over {len(times)} calls ({shown})"
        )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
