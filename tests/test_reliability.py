"""Fault injection: bad input, faults and interruptions lose nothing and explain themselves (docs/reliability.md)."""

import errno
import importlib
import json
import logging
import os
import pickle
import re
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
    ours = [r for r in caplog.records if r.name.startswith("dicecfg")]  # diffusers warns per batch on its own
    hits = [r.getMessage() for r in ours if "truncated" in r.getMessage()]
    assert len(hits) == 1 and hits[0].startswith("2 of 3 prompts") and "77 tokens" in hits[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        sharpen(tiny_sd, Sharpener(32, inner_dim=64, heads=4), ["a red circle"])
    assert not [r for r in caplog.records if r.name.startswith("dicecfg") and "truncated" in r.getMessage()]


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


# ---- issue 16: nothing lost, nothing mislabelled, never a traceback --------------------------------------------
TRAIN = ["--batch-size", "4", "--teacher-pool", "8", "--teacher-steps", "2", "--eval-pairs", "4"]
TRAIN += ["--log-every", "1", "--eval-every", "0", "--checkpoint-every", "2", "--device", "cpu", "-q"]


def _train(model, out, prompts_file, steps, *extra):
    # the paper's recipe: its constant learning rate lets a resumed run go on to more steps
    return main(["train", "--model", str(model), "--prompts", str(prompts_file), "--out", str(out)]
                + ["--steps", str(steps), "--recipe", "paper", *TRAIN, *extra])  # fmt: skip


def _one_line_error(capsys, code, *words):
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dice: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


def test_resume_with_other_content_is_refused(tiny_sd_dir, prompts, tmp_path, capsys):
    a, b, run = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "run"
    a.write_text("\n".join(prompts) + "\n")
    b.write_text("\n".join(reversed(prompts)) + "\n")  # the same count, another content
    assert _train(tiny_sd_dir, run, a, 2) == 0
    _one_line_error(capsys, _train(tiny_sd_dir, run, b, 4), "prompts_sha256", "different settings")
    negs = [tmp_path / "n1.txt", tmp_path / "n2.txt"]
    negs[0].write_text("blurry\n")
    negs[1].write_text("grainy\n")
    assert _train(tiny_sd_dir, tmp_path / "neg", a, 2, "--negative-prompts", str(negs[0])) == 0
    code = _train(tiny_sd_dir, tmp_path / "neg", a, 4, "--negative-prompts", str(negs[1]))
    _one_line_error(capsys, code, "negative_prompts")
    # a run recorded before the content was: its run.json lacks the hash, and it still resumes
    record = json.loads((run / "run.json").read_text())
    del record["identity"]["prompts_sha256"]
    (run / "run.json").write_text(json.dumps(record))
    assert _train(tiny_sd_dir, run, a, 4) == 0 and _ckpt_step(run) == 4
    assert "prompts_sha256" in json.loads((run / "run.json").read_text())["identity"]


def test_image_folder_content_is_part_of_the_identity(tiny_sd, tmp_path):
    root = _folder(tmp_path / "imgs", 6)
    cfg = DistillConfig(steps=1, **FAST)
    distill(tiny_sd, None, config=cfg, images=root, output_dir=tmp_path / "run")
    (root / "metadata.jsonl").write_text((root / "metadata.jsonl").read_text().replace("red", "blue"))
    with pytest.raises(InputError, match="images_sha256"):
        distill(
            tiny_sd, None, config=DistillConfig(steps=2, **FAST), images=root, output_dir=tmp_path / "run"
        )


def test_train_refuses_a_folder_that_is_not_a_run(tiny_sd_dir, prompts, tmp_path, capsys):
    pfile, sharp = tmp_path / "p.txt", tmp_path / "sharp"
    pfile.write_text("\n".join(prompts) + "\n")
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(sharp)
    before = {p.name: p.read_bytes() for p in sharp.iterdir()}
    err = _one_line_error(capsys, _train(tiny_sd_dir, sharp, pfile, 2), "not a run folder", "config.json")
    assert "model.safetensors" in err
    assert {p.name: p.read_bytes() for p in sharp.iterdir()} == before


def _sample(model, out, *args):
    return main(
        ["sample", *args, "--model", str(model), "--steps", "1", "--out", str(out), "--device", "cpu", "-q"]
    )


def test_sample_into_a_folder_with_samples_keeps_them(tiny_sd_dir, tmp_path):
    out = tmp_path / "samples"
    assert _sample(tiny_sd_dir, out, "a red circle", "--method", "unguided") == 0
    first = (out / "0000_unguided_seed0.png").read_bytes()
    assert _sample(tiny_sd_dir, out, "a blue square", "a red circle", "--method", "cfg") == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["0000_unguided_seed0.png", "0001_cfg_seed0.png", "0002_cfg_seed1.png"]
    assert (out / "0000_unguided_seed0.png").read_bytes() == first
    records = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == names  # every image described, in order
    assert [r["prompt"] for r in records] == ["a red circle", "a blue square", "a red circle"]


def test_cfg_at_w_one_is_recorded_as_one_pass_and_below_refused(
    tiny_sd_dir, tiny_sd, tmp_path, capsys, monkeypatch
):
    from dicecfg.evaluation.images import Row
    from dicecfg.sampling.methods import CFG

    (s,) = generate(tiny_sd, ["a"], method="cfg", guidance_scale=1.0, num_inference_steps=2, progress=False)
    assert s.nfe == 2 and s.params == {"guidance_scale": 1.0, "start": 0.0, "stop": 1.0}
    assert Row(CFG(1.0), 20).nfe == 20 and Row(CFG(5.0), 20).nfe == 40
    assert _sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--guidance-scale", "1") == 0
    assert json.loads((tmp_path / "s" / "samples.jsonl").read_text())["nfe"] == 1
    monkeypatch.setattr("dicecfg.sampling.job.load_pipeline", lambda *a, **k: pytest.fail("loaded"))
    for w in ("0.5", "nan", "inf"):
        code = _sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--guidance-scale", w)
        _one_line_error(capsys, code, "guidance")
    for scales in (["1", "nan"], ["0"]):
        _one_line_error(capsys, main(["eval", "--cfg-scales", *scales, "--model", str(tiny_sd_dir), "-q"]))
    with pytest.raises(InputError, match="below 1"):
        list(generate(tiny_sd, ["a"], method="cfg", guidance_scale=0.5, progress=False))


def test_options_the_method_ignores_get_a_notice(tiny_sd_dir, tmp_path, capsys, caplog):
    code = _sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--sharpener", "/does/not/exist")
    _one_line_error(capsys, code, "does not exist")
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        assert _sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--alpha", "3") == 0
    assert any("--method cfg ignores --alpha" in r.getMessage() for r in caplog.records)


def _broken_model(tmp_path, tiny_sd_dir, name, content):
    import shutil

    model = tmp_path / name
    shutil.copytree(tiny_sd_dir, model)
    (model / "model_index.json").write_bytes(content)
    return model


def _sharpener_with(tmp_path, name, **config):
    path = tmp_path / name
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text()) | config
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_bad_input_is_one_line_exit_2(tiny_sd_dir, prompts, tmp_path, capsys, monkeypatch):
    """The inputs that used to end in a traceback: each now fails with one line, most before the model loads."""
    m = str(tiny_sd_dir)
    pfile, nul, a_file = tmp_path / "p.txt", tmp_path / "nul.txt", tmp_path / "file.txt"
    pfile.write_text("\n".join(prompts) + "\n")
    nul.write_bytes(b"a red circle\na blue\x00 square\n")
    a_file.write_text("keep me\n")
    sample = ["sample", "a", "--model", m, "--method", "cfg", "--device", "cpu", "-q"]
    train = ["train", "--model", m, "--prompts", str(pfile), "--out", str(tmp_path / "run"), "-q"]
    cases = [
        ([*sample, "--prompts", str(tmp_path)], "is a folder"),
        ([*sample, "--prompts", str(nul)], "nul.txt:2: holds a NUL byte"),
        ([*sample, "--seed", str(2**63)], "--seed (seed) is out of range"),
        (["sample", "a", "b", "--seed", str(2**63 - 1), "--model", m, "-q"], "Seeds must lie in"),
        ([*sample, "--out", str(a_file)], "is a file"),
        ([*sample, "--out", str(a_file / "sub")], "is a file, not a folder"),
        ([*sample, "--out", "/proc/dice-out"], "cannot write"),
        ([*sample, "--device", "nonsense"], "Unknown device"),
        ([*sample, "--sharpener", str(_sharpener_with(tmp_path, "h0", heads=0))], "does not describe"),
        ([*sample, "--sharpener", str(_sharpener_with(tmp_path, "h7", heads=7))], "does not describe"),
        ([*train, "--checkpoint-every", "0"], "--checkpoint-every (checkpoint_every) must be >= 1"),
        ([*train, "--log-every", "0"], "--log-every (log_every) must be >= 1"),
        ([*train, "--heads", "7"], "heads (7) must divide inner_dim (512)"),
        ([*train, "--teacher-pool", "0"], "--teacher-pool (teacher_pool) must be >= 1"),
        ([*train, "--resolution", "30", "--device", "cpu"], "resolution"),
        ([*train, "--gpus", "0"], "--gpus (gpus) must be >= 1"),
        ([*train, "--gpus", "-1"], "--gpus (gpus) must be >= 1"),
        ([*train, "--guidance-scale", "nan"], "finite"),
        (["demo", "--prompts", "0"], "--prompts (prompts) must be >= 1"),
        (["demo", "--prompts", "-2"], "--prompts (prompts) must be >= 1"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*sample, "--device", "cuda"], "no cuda device"))
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        cases.append(([*sample, "--out", str(ro / "out")], "cannot write"))
    for content in (b"{not json", b"[1, 2]", b"{}", b'{"_class_name": "NoSuchPipeline"}', b"\xff\xfe"):
        model = _broken_model(tmp_path, tiny_sd_dir, f"m{len(cases)}", content)
        cases.append((["sample", "a", "--model", str(model), "--method", "cfg", "-q"], "model_index.json"
                      if content != b'{"_class_name": "NoSuchPipeline"}' else "Could not load"))  # fmt: skip
    for argv, words in cases:
        _one_line_error(capsys, main(argv), words)
    assert a_file.read_text() == "keep me\n" and not list((tmp_path / "run").iterdir())  # nothing written


@pytest.mark.parametrize("flag", ["--loss", "--xt-source", "--mixed-precision", "--mask-mode"])
def test_free_text_options_are_choices(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", "x", flag, "nonsense"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_prompts_after_an_option_are_prompts(tiny_sd_dir, tmp_path):
    out = tmp_path / "s"
    assert (
        _sample(tiny_sd_dir, out, "a red circle", "--seed", "5", "a blue square", "--method", "unguided") == 0
    )
    records = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [("a red circle", 5), ("a blue square", 6)]
    with pytest.raises(SystemExit):  # a command without bare arguments still refuses them
        main(["train", "--out", str(tmp_path / "r"), "stray"])


def _trained_run(tiny_sd_dir, prompts, tmp_path):
    pfile, run = tmp_path / "p.txt", tmp_path / "run"
    pfile.write_text("\n".join(prompts) + "\n")
    assert _train(tiny_sd_dir, run, pfile, 2) == 0
    return pfile, run, {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_damaged_run_files_are_named_with_a_remedy(tiny_sd_dir, prompts, tmp_path, capsys, caplog):
    pfile, run, files = _trained_run(tiny_sd_dir, prompts, tmp_path)

    def restore():
        for name, data in files.items():
            (run / name).write_bytes(data)

    (run / "run.json").write_text('{"config": {"st')
    _one_line_error(capsys, _train(tiny_sd_dir, run, pfile, 4), "run.json is damaged", "delete it")
    restore()
    (run / CHECKPOINT).write_bytes(files[CHECKPOINT][:100])
    _one_line_error(capsys, _train(tiny_sd_dir, run, pfile, 4), "checkpoint.safetensors is damaged", "step 0")
    restore()
    (run / "teacher_pool.safetensors").write_bytes(files["teacher_pool.safetensors"][:-10])
    _one_line_error(
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


def test_memory_is_estimated_before_work(tiny_sd_dir, tiny_sd, tmp_path, monkeypatch, capsys):
    import dicecfg.sampling.checks as checks

    _no_pipeline_call(monkeypatch, tiny_sd)
    with pytest.raises(InputError, match=r"needs at least .* GiB"):
        list(generate(tiny_sd, ["a"], method="unguided", height=65536, width=65536, progress=False))
    monkeypatch.setattr(checks, "available_memory", lambda device: 2**20)  # 1 MiB free: 64 images need more
    with pytest.raises(InputError, match=r"Sampling 64 image\(s\).*smaller --batch-size"):
        list(generate(tiny_sd, ["a"] * 100, method="unguided", batch_size=64, progress=False))
    monkeypatch.setattr(checks, "available_memory", lambda device: 2**10)  # 1 KiB: not even x_0 and noise
    with pytest.raises(InputError, match="Training with this batch size"):
        distill(tiny_sd, ["a"], config=DistillConfig(steps=1, **FAST), output_dir=tmp_path / "never")
    monkeypatch.undo()
    code = _sample(
        tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--height", "65536", "--width", "65536"
    )
    _one_line_error(capsys, code, "GiB")


def test_out_of_memory_in_training_keeps_the_checkpoint(tiny_sd, prompts, tmp_path, monkeypatch):
    _fail_at(monkeypatch, 6, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    with pytest.raises(OutOfMemoryError, match="while training.*checkpoint in .* is intact.*grad_accum"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=8, **FAST), output_dir=tmp_path / "run")
    assert _ckpt_step(tmp_path / "run") == 4 and not (tmp_path / "run" / "run.lock").exists()


def test_long_negative_prompts_are_counted_apart(tiny_sd, caplog):
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        list(generate(tiny_sd, ["a", "b"], method="cfg", negative_prompt=LONG, num_inference_steps=1,
                      progress=False))  # fmt: skip
    ours = [r for r in caplog.records if r.name.startswith("dicecfg")]  # diffusers warns per batch on its own
    hits = [r.getMessage() for r in ours if "truncated" in r.getMessage()]
    assert len(hits) == 1 and hits[0].startswith("2 of 2 negative prompts"), hits


def test_warnings_get_their_own_line_under_a_progress_bar(capsys):
    from tqdm import tqdm

    from dicecfg.cli import NoTorchvisionNotice, TqdmHandler

    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("dicecfg.test_bar")
    log.addHandler(handler)
    log.propagate = False
    try:
        with tqdm(total=4, desc="distill", file=sys.stderr, mininterval=0) as bar:
            bar.update(1)
            log.warning("careful")
            bar.update(1)
    finally:
        log.removeHandler(handler)
    pieces = [p.strip() for p in re.split(r"[\r\n]", capsys.readouterr().err) if p.strip()]
    assert "WARNING careful" in pieces, pieces  # never glued to a bar: "distill: 25%|...|WARNING careful"
    record = logging.LogRecord(
        "t", logging.WARNING, "", 0, "`X` requires torchvision (not installed)", (), None
    )
    assert not NoTorchvisionNotice().filter(record)


def test_no_torchvision_notices_on_the_command_line(tiny_sd_dir, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "dicecfg.cli", "sample", "a", "--model", str(tiny_sd_dir), "--method",
         "unguided", "--steps", "1", "--alpha", "2", "--out", str(tmp_path / "s"), "--device", "cpu"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "requires torchvision" not in res.stderr and "Traceback" not in res.stderr
    assert "WARNING --method unguided ignores --alpha" in res.stderr.splitlines()
