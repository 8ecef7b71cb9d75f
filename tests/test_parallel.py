"""Data-parallel distillation (issue 7): 2 CPU processes (gloo) with gradient accumulation equal 1 process with
the same global batch. One 2-process run (its start-up dominates the time) covers both: batch 1 x 2 processes x
grad_accum 3 = batch 6, three different factors, so a slice taken with the wrong one fails."""

import json
import subprocess
import sys

import torch

from dicecfg import DistillConfig, Sharpener, distill
from dicecfg.runs.folder import read_stats

ARGS = ["--teacher-pool", "16", "--teacher-steps", "3", "--eval-pairs", "8", "--lr", "0.002"]
ARGS += ["--log-every", "2", "--eval-every", "0", "--checkpoint-every", "2", "--steps", "4"]


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


def test_main_process_first_runs_rank_0_then_the_others_and_leaves_together():
    """`Parallel.main_process_first`: rank 0 runs the block while the others wait at a barrier; all leave it
    at a common barrier (the teacher pool is made by rank 0, then loaded by the others)."""
    from dicecfg.training.parallel import Parallel

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
