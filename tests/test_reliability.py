"""Fault injection: bad input, faults and interruptions lose nothing and explain themselves (docs/reliability.md)."""

import errno
import importlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dicecfg import DistillConfig, Sharpener, distill, generate, sharpen
from dicecfg.cli import main
from dicecfg.errors import (
    CheckpointWriteError,
    InputError,
    OutOfMemoryError,
    RunLockedError,
    SharpenerLoadError,
    TrainingDivergedError,
)
from dicecfg.runs.folder import CHECKPOINT, read_stats
from dicecfg.sampling.prompts import load_prompts
from dicecfg.training.data import ImageCaptionFolder

FAST = dict(
    batch_size=4,
    lr=2e-3,
    teacher_pool=8,
    teacher_steps=2,
    eval_pairs=4,
    log_every=1,
    eval_every=0,
    checkpoint_every=4,
    progress=False,
)
LONG = " ".join(["red circle"] * 60)  # 120 words: past CLIP's 77 tokens


def _same(a, b):
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def _ckpt_step(run_dir):
    from safetensors import safe_open

    with safe_open(str(run_dir / CHECKPOINT), framework="pt") as f:
        return int(f.metadata()["step"])


# ---- sharpener files -------------------------------------------------------------------------------------------
class _Evil:
    """Unpickling this creates the marker file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_refused_and_never_unpickled(tiny_sd_dir, tmp_path, capsys):
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Evil(marker))
    assert not marker.exists()
    for name in ("evil.pt", "evil.bin", "evil.pkl"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(SharpenerLoadError, match="never loads pickles"):
            Sharpener.from_pretrained(tmp_path / name)
    only_bin = tmp_path / "only_bin"
    only_bin.mkdir()
    (only_bin / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(
        SharpenerLoadError, match=r"missing config.json, model.safetensors.*pytorch_model.bin"
    ):
        Sharpener.from_pretrained(only_bin)
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(tmp_path / "renamed")
    (tmp_path / "renamed" / "model.safetensors").write_bytes(payload)  # a pickle behind the right name
    with pytest.raises(SharpenerLoadError, match="not a readable safetensors"):
        Sharpener.from_pretrained(tmp_path / "renamed")
    code = main(["sample", "x", "--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "evil.pt"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pickle" in err and "Traceback" not in err
    assert not marker.exists()


def test_corrupt_config_and_wrong_family(tiny_sd_dir, tmp_path, capsys):
    sh = tmp_path / "sh"
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(sh)
    (sh / "config.json").write_text("[1, 2")
    with pytest.raises(SharpenerLoadError, match="not valid JSON"):
        Sharpener.from_pretrained(sh)
    (sh / "config.json").write_text("[1, 2]")
    with pytest.raises(SharpenerLoadError, match="does not describe a sharpener"):
        Sharpener.from_pretrained(sh)
    Sharpener(32, inner_dim=64, heads=4, family="pixart").save_pretrained(tmp_path / "px")
    code = main(["sample", "x", "--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "px"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "'pixart' family" in err and err.count("\n") == 1


# ---- prompt inputs ---------------------------------------------------------------------------------------------
def test_long_prompts_warn_once_with_count(tiny_sd, caplog):
    prompts = [LONG, "a red circle", LONG + " square"]
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        list(generate(tiny_sd, prompts, method="cfg", num_inference_steps=1, batch_size=1, progress=False))
    hits = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(hits) == 1 and hits[0].startswith("2 of 3 prompts") and "77 tokens" in hits[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        sharpen(tiny_sd, Sharpener(32, inner_dim=64, heads=4), ["a red circle"])
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]


def test_prompt_files_blank_lines_and_jsonl_fields(tmp_path):
    (tmp_path / "p.txt").write_text("\n  a red circle \n\n\t\na blue square\n")
    assert load_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n\n{"prompt": "b"}\n{"label": "c"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:4: no caption field"):
        load_prompts(tmp_path / "p.jsonl")
    (tmp_path / "bad.txt").write_bytes(b"a red circle\nblue \xff\xfe square\n")
    with pytest.raises(InputError, match=r"bad.txt:2: not valid UTF-8"):
        load_prompts(tmp_path / "bad.txt")


def test_images_without_captions_skipped_with_count(tmp_path, caplog):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "0.txt").write_text("a red circle")
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        assert ImageCaptionFolder(tmp_path, 8).captions == ["a red circle"]
    assert any("skipped 2 images without a caption" in r.getMessage() for r in caplog.records)


# ---- image folders ---------------------------------------------------------------------------------------------
def _folder(root, n_good, modes=("RGB",), bad=0):
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n_good):
        arr = rng.integers(0, 255, (20, 24, 4), dtype=np.uint8)
        img = Image.fromarray(arr, "RGBA")
        mode = modes[i % len(modes)]
        img = img.convert("RGB").convert("P") if mode == "P" else img.convert(mode)
        img.save(root / f"{i}.png")
        lines.append({"file_name": f"{i}.png", "text": "a red circle"})
    for j in range(bad):
        (root / f"bad{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(50)) if j % 2 else b"junk")
        lines.append({"file_name": f"bad{j}.png", "text": "a blue square"})
    lines.append({"file_name": "missing.png", "text": "a green triangle"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_image_folder_skips_unreadable_converts_modes(tiny_sd, tmp_path, caplog):
    root = _folder(tmp_path / "imgs", 8, modes=("RGB", "RGBA", "L", "P", "LA"), bad=2)
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        folder = ImageCaptionFolder(root, 16)
    assert len(folder) == 8 and any("skipped 3 unreadable" in r.getMessage() for r in caplog.records)
    batch = folder.batch(list(range(8)))
    assert batch.shape == (8, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    cfg = DistillConfig(steps=2, **FAST)
    distill(tiny_sd, None, config=cfg, images=root, output_dir=tmp_path / "run")  # trains on what is usable
    with pytest.raises(InputError, match="none of its 3 captioned images can be read"):
        ImageCaptionFolder(_folder(tmp_path / "allbad", 0, bad=2), 16)


# ---- training faults -------------------------------------------------------------------------------------------
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


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_sd, prompts, tmp_path, monkeypatch, capsys):
    _fail_at(monkeypatch, 6, torch.tensor(float("nan")))
    with pytest.raises(TrainingDivergedError, match=r"nan at step 6.*checkpoint \(step 4\)"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=10, **FAST), output_dir=tmp_path / "run")
    assert _ckpt_step(tmp_path / "run") == 4 and not (tmp_path / "run" / "run.lock").exists()
    monkeypatch.undo()
    resumed = distill(tiny_sd, prompts, config=DistillConfig(steps=6, **FAST), output_dir=tmp_path / "run")
    assert torch.isfinite(next(resumed.parameters())).all()


@pytest.mark.parametrize("where", ["save_file", "os.replace"])
def test_failing_checkpoint_write_keeps_previous(tiny_sd, prompts, tmp_path, monkeypatch, where):
    import dicecfg.runs.io as io

    run = tmp_path / "run"
    distill(tiny_sd, prompts, config=DistillConfig(steps=4, **FAST), output_dir=run)
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
        distill(tiny_sd, prompts, config=DistillConfig(steps=8, **FAST), output_dir=run)
    monkeypatch.undo()
    assert (run / CHECKPOINT).read_bytes() == before and _ckpt_step(run) == 4
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == "run.lock"]


def test_run_lock_refuses_live_and_takes_over_stale(tiny_sd, prompts, tmp_path, caplog):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live process holds it
    with pytest.raises(RunLockedError, match=f"in use by another run \\(pid {os.getpid()}"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=1, **FAST), output_dir=run)
    assert not (run / "run.json").exists()  # refused before touching anything
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "run.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=1, **FAST), output_dir=run)
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    assert not (run / "run.lock").exists()


@pytest.mark.parametrize("k", [2, 7, 11])  # before the first checkpoint, between two, just before the end
def test_killed_at_any_step_resumes_exactly(tiny_sd, prompts, tmp_path, monkeypatch, k):
    cfg = DistillConfig(steps=12, **FAST)
    full = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "full")
    _fail_at(monkeypatch, k, RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "part")
    assert not (tmp_path / "part" / "run.lock").exists()
    monkeypatch.undo()
    resumed = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "part")
    assert _same(full, resumed), k
    stats = read_stats(tmp_path / "part")
    assert [r["step"] for r in stats if "loss" in r] == list(range(1, 13)), k
    assert [r["step"] for r in stats if "eval_loss" in r] == [0, 12]


def _logged(run):
    try:
        return [r for r in read_stats(run) if "loss" in r]
    except json.JSONDecodeError:  # a line being written
        return []


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
    k = _ckpt_step(run)
    steps = [r["step"] for r in read_stats(run) if "loss" in r]
    assert k >= 1 and steps == list(range(1, k + 1))
    cfg = DistillConfig(steps=k + 2, **{**FAST, "checkpoint_every": 1000})
    pipe = load_pipeline(tiny_sd_dir)
    resumed = distill(pipe, prompts, config=cfg, output_dir=run)
    full = distill(pipe, prompts, config=cfg, output_dir=tmp_path / "full")
    assert _same(full, resumed)
    assert [r["step"] for r in read_stats(run) if "loss" in r] == list(range(1, k + 3))


# ---- sampling --------------------------------------------------------------------------------------------------
def _no_pipeline_call(monkeypatch, pipe, exc=None):
    def call(self, *a, **k):
        raise exc or AssertionError("the pipeline must not run")

    monkeypatch.setattr(type(pipe), "__call__", call)


def test_invalid_size_refused_before_work(tiny_sd, monkeypatch):
    _no_pipeline_call(monkeypatch, tiny_sd)
    for kw in (dict(height=20), dict(width=-8), dict(height=0)):
        with pytest.raises(InputError, match="multiple of 8"):
            list(generate(tiny_sd, ["a red circle"], method="unguided", progress=False, **kw))
    with pytest.raises(InputError, match="num_inference_steps"):
        list(generate(tiny_sd, ["a"], method="unguided", num_inference_steps=0, progress=False))


def test_alpha_out_of_range_warns(tiny_sd, caplog):
    sharp = Sharpener(32, inner_dim=64, heads=4)
    for alpha in (-1.0, 5.0):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dicecfg"):
            list(
                generate(tiny_sd, ["a"], sharpener=sharp, alpha=alpha, num_inference_steps=1, progress=False)
            )
        assert any("outside the usual range" in r.getMessage() for r in caplog.records), alpha
    with pytest.raises(InputError, match="finite"):
        sharpen(tiny_sd, sharp, ["a"], alpha=float("nan"))


def test_out_of_memory_suggests_smaller_batch(tiny_sd_dir, tiny_sd, monkeypatch, capsys):
    _no_pipeline_call(monkeypatch, tiny_sd, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    with pytest.raises(OutOfMemoryError, match="batch of 2 images.*smaller --batch-size"):
        list(generate(tiny_sd, ["a", "b", "c"], method="cfg", batch_size=2, progress=False))
    code = main(["sample", "a", "--model", str(tiny_sd_dir), "--method", "cfg", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch-size" in err and err.count("\n") == 1
