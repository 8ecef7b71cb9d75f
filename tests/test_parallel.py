"""Data-parallel distillation (docs/parallel.md): 2 CPU processes (gloo) with gradient accumulation equal 1 process with
the same global batch. One 2-process run (its start-up dominates the time) covers both: batch 1 x 2 processes x
grad_accum 3 = batch 6, three different factors, so a slice taken with the wrong one fails."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import bench_script

from dicecfg import DistillConfig, Sharpener, distill
from dicecfg.runs.folder import read_stats

ARGS = ["--teacher-pool", "16", "--teacher-steps", "3", "--eval-pairs", "8", "--lr", "0.002"]
ARGS += ["--log-every", "2", "--eval-every", "0", "--checkpoint-every", "2", "--steps", "4"]


@pytest.mark.integration  # processes of their own
def test_two_ranks_with_grad_accum_equal_one_process(tiny_sd_dir, tiny_sd, prompts, tmp_path):
    pfile, run = tmp_path / "prompts.txt", tmp_path / "run2"
    pfile.write_text("\n".join(prompts) + "\n")
    cmd = [sys.executable, "-m", "dicecfg.cli", "-q", "train", "--model", str(tiny_sd_dir), "--device", "cpu"]
    cmd += ["--prompts", str(pfile), "--out", str(run), "--batch-size", "1", "--gpus", "2"]
    # the paper's recipe: one timestep per batch, the same draws whatever the number of ranks
    cmd += ["--grad-accum", "3", "--recipe", "paper", *ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("sharpener (4 steps) saved") == 1  # rank 0 alone reports and writes

    cfg = DistillConfig(
        steps=4,
        batch_size=6,
        teacher_pool=16,
        teacher_steps=3,
        eval_pairs=8,
        lr=2e-3,
        log_every=2,
        eval_every=0,
        checkpoint_every=2,
        progress=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun gives each rank: the same CPU kernels, the same float rounding
    try:
        one = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "run1")
    finally:
        torch.set_num_threads(threads)
    two = Sharpener.from_pretrained(run)
    for k, v in one.state_dict().items():
        assert torch.allclose(v, two.state_dict()[k], atol=1e-5), k
    a, b = read_stats(tmp_path / "run1"), read_stats(run)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 2, 4, 4]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "eval_loss"):
            if key in x:
                assert abs(x[key] - y[key]) <= 1e-4 * abs(x[key]), (key, x, y)
    identity = json.loads((run / "run.json").read_text())["identity"]
    assert identity["world_size"] == 2 and identity["grad_accum"] == 3
    assert not (run / "run.lock").exists()


# ---- sampling and evaluation in several processes (`dice sample` and `dice eval` with --gpus N) ------------
def _dice(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dicecfg.cli", "-q", *args], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _pixels(folder):
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def _one_process(fn, *args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun gives each rank: the same CPU kernels, the same float rounding
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.integration  # processes of their own
def test_sample_on_two_ranks_equals_one_process(tiny_sd_dir, prompts, tmp_path):
    from dicecfg.sampling.job import SampleJob, run_sample

    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(prompts[:5]) + "\n")
    common = dict(model=str(tiny_sd_dir), method="cfg", steps=2, batch_size=2, seed=3, device="cpu")
    one = tmp_path / "one"
    _one_process(run_sample, SampleJob(prompts_file=str(pfile), out=str(one), progress=False, **common))
    two = tmp_path / "two"
    proc = _dice("sample", "--prompts", str(pfile), "--model", str(tiny_sd_dir), "--method", "cfg", "--steps", "2",
                 "--batch-size", "2", "--seed", "3", "--device", "cpu", "--out", str(two), "--gpus", "2")  # fmt: skip
    assert proc.stdout.count("wrote 5 images") == 1  # rank 0 alone reports
    a, b = _pixels(one), _pixels(two)
    assert list(a) == list(b) and len(a) == 5
    assert all(np.array_equal(a[k], b[k]) for k in a)

    def lines(folder):  # everything but the timing, in file order
        return [{k: v for k, v in json.loads(ln).items() if k != "seconds"}
                for ln in (folder / "samples.jsonl").read_text().splitlines()]  # fmt: skip

    assert lines(one) == lines(two) and [r["seed"] for r in lines(two)] == [3, 4, 5, 6, 7]


@pytest.mark.integration  # processes of their own
def test_eval_on_two_ranks_resumes_and_equals_one_process(tiny_sd_dir, prompts, tmp_path):
    """An interrupted eval (images missing from both ranks' shares, no eval.json) finished by 2 processes gives
    the images and the eval.json of one process, making only what was missing."""
    import shutil

    from dicecfg.evaluation.evaluate import EvalJob, run_eval

    one = tmp_path / "one"
    common = dict(model=str(tiny_sd_dir), methods=("unguided", "cfg"), steps=(2,), batch_size=2, device="cpu")
    cfg = EvalJob(prompts=tuple(prompts[:5]), out=str(one), plot=False, progress=False, **common)
    full = _one_process(run_eval, cfg)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    (two / "eval.json").unlink()
    gone = [p for p in sorted((two / "images").rglob("*.png")) if p.name[:5] in ("00000", "00003", "00004")]
    for p in gone:  # indices 0 and 4 are rank 0's share, 3 rank 1's
        p.unlink()
    proc = _dice("eval", *prompts[:5], "--model", str(tiny_sd_dir), "--methods", "unguided", "cfg", "--steps", "2",
                 "--batch-size", "2", "--device", "cpu", "--no-plot", "--out", str(two), "--gpus", "2")  # fmt: skip
    assert proc.stdout.count(f"({len(gone)} images generated now)") == 1 and len(gone) == 6
    a, b = _pixels(one), _pixels(two)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    rows = json.loads((two / "eval.json").read_text())["rows"]
    skip = ("generated", "seconds_per_image")
    assert [{k: v for k, v in r.items() if k not in skip} for r in rows] == [
        {k: v for k, v in r.items() if k not in skip} for r in full["rows"]
    ]
    assert [r["generated"] for r in rows] == [
        3,
        3,
    ]  # only what was missing (a finished row makes none: eval tests)


@pytest.mark.integration  # processes of their own
def test_parallel_sampling_study_runs_on_cpu(tiny_sd_dir, tmp_path):
    """benchmarks/parallel_sampling/study.py (made for 2 GPUs) in a tiny CPU setting: rows, ratios, same images."""
    study = bench_script("parallel_sampling/study.py")
    rows = study.main(["--work", str(tmp_path), "--prompts", "3", "--gpus", "1", "--model", str(tiny_sd_dir),
                       "--methods", "unguided", "--steps", "1", "--batch-size", "2", "--device", "cpu",
                       "--fast", "auto"])  # fmt: skip
    assert [r["gpus"] for r in rows] == [1] and all(
        r["images"] == 3 for r in rows
    )  # (2 processes: tests above)
    assert rows[0]["speedup_wall"] == 1.0 and rows[0]["wall_s"] > 0
    assert rows[0]["fast"] == ["off"] and rows[0]["dtype"] == "torch.float32" and rows[0]["card"] == "cpu"
    assert json.loads((tmp_path / "study.json").read_text())["rows"] == rows


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bad_input_with_gpus_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """`dice sample --gpus 2` and `dice eval --gpus 2` check their input before starting processes: one line,
    exit 2, no process started."""
    import dicecfg.cli as cli

    started = []
    monkeypatch.setattr(cli, "relaunch", lambda *a, **k: started.append(a) or 0)
    bad = [
        "--model",
        str(tmp_path / "missing"),
        "--device",
        "cpu",
        "--gpus",
        "2",
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(["-q", "sample", "a red circle", *bad]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dice: error: --method dice needs --sharpener (a folder written by `dice train`)."
    ]
    assert cli.main(["-q", "eval", "a red circle", *bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "dice: error: dice rows need --sharpener"
    )
    assert not started


def test_each_rank_shares_by_index_and_a_rank_may_have_none():
    """Prompts split by index (``i % world == rank``); with more processes than prompts a rank has no share and
    makes nothing (the launch itself is covered by the sample and eval tests above)."""
    from dicecfg.runs.parallel import Parallel
    from dicecfg.sampling.shard import share

    assert share(range(5), Parallel(rank=0, world=2)) == [0, 2, 4]
    assert share(range(5), Parallel(rank=1, world=2)) == [1, 3]
    assert share(range(1), Parallel(rank=1, world=2)) == []
    assert share(range(3), Parallel()) == [0, 1, 2]


def test_main_process_first_runs_rank_0_then_the_others_and_leaves_together():
    """`Parallel.main_process_first`: rank 0 runs the block while the others wait at a barrier; all leave it
    at a common barrier (the teacher pool is made by rank 0, then loaded by the others)."""
    from dicecfg.runs.parallel import Parallel

    class Recording(Parallel):
        def barrier(self):
            events.append("barrier")

    for rank, expected in ((0, ["block", "barrier", "barrier"]), (1, ["barrier", "block", "barrier"])):
        events = []
        with Recording(rank=rank, world=2).main_process_first():
            events.append("block")
        assert events == expected, rank
    events = []
    with Parallel().main_process_first():  # one process: no barrier at all (Parallel.barrier is a no-op)
        events.append("block")
    assert events == ["block"]


# ---- the --gpus N launcher: signals, deaths (issue 33 rows 9-10) ---------------------------------------------
WORKER = """
import os, signal, sys, time
rank, folder = os.environ["RANK"], sys.argv[1]
def stop(signum, frame):  # as dice train does: finish the step, checkpoint, exit 128 + signal
    time.sleep(0.3)
    open(os.path.join(folder, f"stopped-{rank}-{signum}"), "w").close()
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
open(os.path.join(folder, f"pid-{rank}"), "w").write(str(os.getpid()))
if rank == sys.argv[2]:
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""
LAUNCHER = "import sys; from dicecfg.runs.parallel import Workers; sys.exit(Workers(sys.argv[1:], 2, {}, grace=5).run())"


def _launch(tmp_path, die: str = "none") -> subprocess.Popen:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-c", LAUNCHER, sys.executable, str(worker), str(tmp_path), die]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(paths, seconds=30):
    import time

    end = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert time.monotonic() < end, paths
        time.sleep(0.05)


@pytest.mark.integration  # processes of their own
def test_the_launcher_forwards_signals_and_waits_for_its_workers(tmp_path):
    """SIGTERM or SIGINT to the launcher reaches every worker once; it waits for them to stop (a checkpoint's
    time) and exits 128 + the signal; no worker outlives it."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        folder = tmp_path / sig.name
        folder.mkdir()
        proc = _launch(folder)
        _wait_for([folder / "pid-0", folder / "pid-1"])
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 128 + sig
        assert {p.name for p in folder.glob("stopped-*")} == {
            f"stopped-0-{int(sig)}",
            f"stopped-1-{int(sig)}",
        }
        assert all(_gone(int((folder / f"pid-{r}").read_text())) for r in (0, 1))


@pytest.mark.integration  # processes of their own
def test_a_dead_worker_is_named_with_its_rank_and_the_others_stop(tmp_path):
    proc = _launch(tmp_path, die="1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "the process of rank 1 (of 2) was killed by SIGKILL; the others were stopped. Re-run" in err
    assert (tmp_path / "stopped-0-15").exists() and _gone(int((tmp_path / "pid-0").read_text()))


@pytest.mark.integration  # processes of their own
def test_sample_on_two_ranks_after_a_dead_worker_is_one_line_and_resumes(tiny_sd_dir, prompts, tmp_path):
    """A worker of `dice sample --gpus 2` killed mid-run: one line naming its rank, exit 2; the same command
    again describes every image in samples.jsonl (records of images the dead run wrote are recovered)."""
    import os
    import signal
    import time

    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(prompts[:6]) + "\n")
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "dicecfg.cli", "-q", "sample", "--prompts", str(pfile), "--model", str(tiny_sd_dir),
           "--method", "cfg", "--steps", "2", "--batch-size", "1", "--device", "cpu", "--out", str(out),
           "--gpus", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while not list(out.glob("0001_*.png")):  # rank 1's first image
        assert time.monotonic() < end and proc.poll() is None
        time.sleep(0.05)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                              text=True).stdout.split()]  # fmt: skip
    rank1 = next(p for p in workers if "RANK=1\0" in open(f"/proc/{p}/environ").read())
    os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "rank 1 (of 2) was killed by SIGKILL" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("dice: error:") and all(_gone(p) for p in workers)
    _dice(*cmd[4:])
    files = {json.loads(ln)["file"] for ln in (out / "samples.jsonl").read_text().splitlines()}
    assert files == {p.name for p in out.glob("*.png")}
