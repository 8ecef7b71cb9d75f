"""Run folders (runs/) under faults: the NaN guard, atomic checkpoints, the run lock, a kill or a signal at any
step (resumed bitwise), changed settings and data, damaged files and the model card (docs/reliability.md)."""

import errno
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import FAST_FAULTS, ckpt_step, image_folder_with_faults, one_line_error, same_weights

from dicecfg import DistillConfig, Sharpener, distill
from dicecfg.cli import main
from dicecfg.errors import (
    CheckpointWriteError,
    InputError,
    OutOfMemoryError,
    RunLockedError,
    TrainingDivergedError,
)
from dicecfg.runs.folder import CHECKPOINT, read_stats


# ---- faults during training --------------------------------------------------------------------------------
def _fail_at(monkeypatch, k, exc):
    """Make the k-th training loss (1-based) raise ``exc`` (or return it when it is a tensor)."""
    d = importlib.import_module("dicecfg.training.objective")  # where the training loss is computed

    real, calls = d.sample_loss, {"n": 0}

    def sample_loss(pred, target, kind):
        out = real(pred, target, kind)
        if out.requires_grad:  # the student's loss (not the teacher-side scale of "relative" weighting)
            calls["n"] += 1
            if calls["n"] == k:
                if isinstance(exc, torch.Tensor):
                    return out * exc
                raise exc
        return out

    monkeypatch.setattr(d, "sample_loss", sample_loss)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_sd, prompts, tmp_path, monkeypatch, capsys):
    _fail_at(monkeypatch, 6, torch.tensor(float("nan")))
    with pytest.raises(TrainingDivergedError, match=r"nan at step 6.*checkpoint \(step 4\)"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=10, **FAST_FAULTS), output_dir=tmp_path / "run")
    assert ckpt_step(tmp_path / "run") == 4 and not (tmp_path / "run" / "run.lock").exists()
    monkeypatch.undo()
    resumed = distill(
        tiny_sd, prompts, config=DistillConfig(steps=6, **FAST_FAULTS), output_dir=tmp_path / "run"
    )
    assert torch.isfinite(next(resumed.parameters())).all()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_out_of_memory_in_training_keeps_the_checkpoint(tiny_sd, prompts, tmp_path, monkeypatch):
    _fail_at(monkeypatch, 6, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    with pytest.raises(OutOfMemoryError, match="while training.*checkpoint in .* is intact.*grad_accum"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=8, **FAST_FAULTS), output_dir=tmp_path / "run")
    assert ckpt_step(tmp_path / "run") == 4 and not (tmp_path / "run" / "run.lock").exists()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("where", ["save_file", "os.replace"])
def test_failing_checkpoint_write_keeps_previous(tiny_sd, prompts, tmp_path, monkeypatch, where):
    import dicecfg.runs.io as io

    run = tmp_path / "run"
    distill(tiny_sd, prompts, config=DistillConfig(steps=4, **FAST_FAULTS), output_dir=run)
    before = (run / CHECKPOINT).read_bytes()
    if where == "save_file":

        def broken(tensors, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(io, "save_file", broken)
    else:
        real = os.replace

        def broken(src, dst):
            if str(dst).endswith(CHECKPOINT):
                raise OSError(errno.EIO, "Input/output error")
            return real(src, dst)

        monkeypatch.setattr(io.os, "replace", broken)
    with pytest.raises(CheckpointWriteError, match="step 8.*previous checkpoint is intact"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=8, **FAST_FAULTS), output_dir=run)
    monkeypatch.undo()
    assert (run / CHECKPOINT).read_bytes() == before and ckpt_step(run) == 4
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == "run.lock"]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_run_lock_refuses_live_and_takes_over_stale(tiny_sd, prompts, tmp_path, caplog):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live process holds it
    with pytest.raises(RunLockedError, match=f"in use by another run \\(pid {os.getpid()}"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=1, **FAST_FAULTS), output_dir=run)
    assert not (run / "run.json").exists()  # refused before touching anything
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "run.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=1, **FAST_FAULTS), output_dir=run)
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    assert not (run / "run.lock").exists()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("k", [2, 7, 11])  # before the first checkpoint, between two, just before the end
def test_killed_at_any_step_resumes_exactly(tiny_sd, prompts, tmp_path, monkeypatch, k):
    cfg = DistillConfig(steps=12, **FAST_FAULTS)
    full = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "full")
    _fail_at(monkeypatch, k, RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "part")
    assert not (tmp_path / "part" / "run.lock").exists()
    monkeypatch.undo()
    resumed = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "part")
    assert same_weights(full, resumed), k
    stats = read_stats(tmp_path / "part")
    assert [r["step"] for r in stats if "loss" in r] == list(range(1, 13)), k
    assert [r["step"] for r in stats if "eval_loss" in r] == [0, 12]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_run_folder_moved_without_its_pool_and_lock_resumes_exactly(tiny_sd, prompts, tmp_path, monkeypatch):
    """How a run cut on one machine goes on on another (benchmarks/second_world/gpu_table.sh packs the folder
    without its teacher pool, which is large and made again from the same seeds, and without run.lock)."""
    cfg = DistillConfig(steps=12, **FAST_FAULTS)
    full = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "full")
    _fail_at(monkeypatch, 7, RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "part")
    monkeypatch.undo()
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    (tmp_path / "part").rename(moved)
    (moved / "teacher_pool.safetensors").unlink()
    assert ckpt_step(moved) == 4 and not (moved / "run.lock").exists()
    resumed = distill(tiny_sd, prompts, config=cfg, output_dir=moved)
    assert same_weights(full, resumed)
    assert [r["step"] for r in read_stats(moved) if "loss" in r] == list(range(1, 13))


def _logged(run):
    try:
        return [r for r in read_stats(run) if "loss" in r]
    except json.JSONDecodeError:  # a line being written
        return []


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_exits_and_resumes_exactly(tiny_sd_dir, prompts, tmp_path, sig, code):
    from dicecfg import load_pipeline

    pfile, run = tmp_path / "prompts.txt", tmp_path / "run"
    pfile.write_text("\n".join(prompts) + "\n")
    args = ["--batch-size", "4", "--teacher-pool", "8", "--teacher-steps", "2", "--eval-pairs", "4"]
    args += ["--lr", "0.002", "--log-every", "1", "--checkpoint-every", "1000", "--eval-every", "0"]
    cmd = [sys.executable, "-m", "dicecfg.cli", "-q", "train", "--model", str(tiny_sd_dir), "--device", "cpu"]
    cmd += ["--prompts", str(pfile), "--out", str(run), "--steps", "100000", "--recipe", "paper", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _logged(run):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and not (run / "run.lock").exists()
    k = ckpt_step(run)
    steps = [r["step"] for r in read_stats(run) if "loss" in r]
    assert k >= 1 and steps == list(range(1, k + 1))
    cfg = DistillConfig(steps=k + 2, **{**FAST_FAULTS, "checkpoint_every": 1000})
    pipe = load_pipeline(tiny_sd_dir)
    resumed = distill(pipe, prompts, config=cfg, output_dir=run)
    full = distill(pipe, prompts, config=cfg, output_dir=tmp_path / "full")
    assert same_weights(full, resumed)
    assert [r["step"] for r in read_stats(run) if "loss" in r] == list(range(1, k + 3))


# ---- the same run again: settings, data and damaged files --------------------------------------------------
TRAIN = ["--batch-size", "4", "--teacher-pool", "8", "--teacher-steps", "2", "--eval-pairs", "4"]
TRAIN += ["--log-every", "1", "--eval-every", "0", "--checkpoint-every", "2", "--device", "cpu", "-q"]


def _train(model, out, prompts_file, steps, *extra):
    # the paper's recipe: its constant learning rate lets a resumed run go on to more steps
    return main(["train", "--model", str(model), "--prompts", str(prompts_file), "--out", str(out)]
                + ["--steps", str(steps), "--recipe", "paper", *TRAIN, *extra])  # fmt: skip


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_resume_with_other_content_is_refused(tiny_sd_dir, prompts, tmp_path, capsys):
    a, b, run = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "run"
    a.write_text("\n".join(prompts) + "\n")
    b.write_text("\n".join(reversed(prompts)) + "\n")  # the same count, another content
    assert _train(tiny_sd_dir, run, a, 2) == 0
    one_line_error(capsys, _train(tiny_sd_dir, run, b, 4), "prompts_sha256", "different settings")
    negs = [tmp_path / "n1.txt", tmp_path / "n2.txt"]
    negs[0].write_text("blurry\n")
    negs[1].write_text("grainy\n")
    assert _train(tiny_sd_dir, tmp_path / "neg", a, 2, "--negative-prompts", str(negs[0])) == 0
    code = _train(tiny_sd_dir, tmp_path / "neg", a, 4, "--negative-prompts", str(negs[1]))
    one_line_error(capsys, code, "negative_prompts")
    # a run.json without the hash (dicecfg 0.x before it was recorded) is not taken for this run: no hash, no match
    record = json.loads((run / "run.json").read_text())
    del record["identity"]["prompts_sha256"]
    (run / "run.json").write_text(json.dumps(record))
    one_line_error(capsys, _train(tiny_sd_dir, run, a, 4), "prompts_sha256: not recorded")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_image_folder_content_is_part_of_the_identity(tiny_sd, tmp_path):
    root = image_folder_with_faults(tmp_path / "imgs", 6)
    cfg = DistillConfig(steps=1, **FAST_FAULTS)
    distill(tiny_sd, None, config=cfg, images=root, output_dir=tmp_path / "run")
    (root / "metadata.jsonl").write_text((root / "metadata.jsonl").read_text().replace("red", "blue"))
    with pytest.raises(InputError, match="images_sha256"):
        distill(
            tiny_sd,
            None,
            config=DistillConfig(steps=2, **FAST_FAULTS),
            images=root,
            output_dir=tmp_path / "run",
        )


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_train_refuses_a_folder_that_is_not_a_run(tiny_sd_dir, prompts, tmp_path, capsys):
    pfile, sharp = tmp_path / "p.txt", tmp_path / "sharp"
    pfile.write_text("\n".join(prompts) + "\n")
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(sharp)
    before = {p.name: p.read_bytes() for p in sharp.iterdir()}
    err = one_line_error(capsys, _train(tiny_sd_dir, sharp, pfile, 2), "not a run folder", "config.json")
    assert "model.safetensors" in err
    assert {p.name: p.read_bytes() for p in sharp.iterdir()} == before


def _trained_run(tiny_sd_dir, prompts, tmp_path):
    pfile, run = tmp_path / "p.txt", tmp_path / "run"
    pfile.write_text("\n".join(prompts) + "\n")
    assert _train(tiny_sd_dir, run, pfile, 2) == 0
    return pfile, run, {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_damaged_run_files_are_named_with_a_remedy(tiny_sd_dir, prompts, tmp_path, capsys, caplog):
    pfile, run, files = _trained_run(tiny_sd_dir, prompts, tmp_path)

    def restore():
        for name, data in files.items():
            (run / name).write_bytes(data)

    (run / "run.json").write_text('{"config": {"st')
    one_line_error(capsys, _train(tiny_sd_dir, run, pfile, 4), "run.json is damaged", "delete it")
    restore()
    (run / CHECKPOINT).write_bytes(files[CHECKPOINT][:100])
    one_line_error(capsys, _train(tiny_sd_dir, run, pfile, 4), "checkpoint.safetensors is damaged", "step 0")
    restore()
    (run / "teacher_pool.safetensors").write_bytes(files["teacher_pool.safetensors"][:-10])
    one_line_error(
        capsys, _train(tiny_sd_dir, run, pfile, 4), "teacher_pool.safetensors is damaged", "rebuilt"
    )
    (run / "teacher_pool.safetensors").unlink()  # as the message says: rebuilt from the same seeds
    assert _train(tiny_sd_dir, run, pfile, 4) == 0
    assert (run / "teacher_pool.safetensors").read_bytes() == files["teacher_pool.safetensors"]
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line cut short by a kill
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        assert _train(tiny_sd_dir, run, pfile, 6) == 0
    assert any("damaged line" in r.getMessage() for r in caplog.records)
    assert [r["step"] for r in read_stats(run) if "loss" in r] == list(range(1, 7))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_model_card_is_honest(tiny_sd_dir, prompts, tmp_path):
    _, run, _ = _trained_run(tiny_sd_dir, prompts, tmp_path)
    card = (run / "README.md").read_text()
    assert "pushed to the Hub" not in card and "More Information Needed" not in card
    assert str(tiny_sd_dir) in card and "2 steps" in card and "l1 loss" in card
    losses = [r["eval_loss"] for r in read_stats(run) if "eval_loss" in r]
    assert f"{losses[0]:.4g} at step 0" in card and f"{losses[-1]:.4g} at step 2" in card
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(tmp_path / "plain")
    assert "not measured" in (tmp_path / "plain" / "README.md").read_text()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("my own notes")  # a card we did not write is kept
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "README.md").read_text() == "my own notes"
