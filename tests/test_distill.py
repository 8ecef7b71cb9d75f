import json
import logging
import re

import numpy as np
import pytest
import torch
from helpers import FAST, FAST_FAULTS, ckpt_step, image_folder_with_faults, same_weights
from PIL import Image

from dicecfg import DistillConfig, Sharpener, distill
from dicecfg.errors import InputError
from dicecfg.runs.folder import read_stats
from dicecfg.training.data import ImageCaptionFolder


def _eval_losses(run_dir):
    losses = [r["eval_loss"] for r in read_stats(run_dir) if "eval_loss" in r]
    print("held-out loss", losses)
    return losses


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_teacher_mode_lowers_heldout_loss(tiny_sd, prompts, tmp_path):
    sharp = distill(tiny_sd, prompts, config=DistillConfig(steps=40, **FAST), output_dir=tmp_path / "run")
    first, last = _eval_losses(tmp_path / "run")[0], _eval_losses(tmp_path / "run")[-1]
    assert last < 0.8 * first, (first, last)
    assert sharp.config["train_steps"] == 40 and sharp.config["guidance_scale"] == 5.0
    loaded = Sharpener.from_pretrained(tmp_path / "run")
    assert same_weights(sharp, loaded)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["steps"] == 40 and "torch" in run["versions"]
    assert sharp.config["base_revision"] == run["base_revision"] == "unknown"  # a plain local folder


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_base_revision_of_a_hub_snapshot(tiny_sd_dir, tmp_path):
    """A pipeline read from a hub-cache snapshot folder records that snapshot's commit."""
    import shutil

    from dicecfg.pipeline import load_pipeline, model_revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--name" / "snapshots" / commit
    shutil.copytree(tiny_sd_dir, snapshot)
    assert model_revision(load_pipeline(snapshot)) == commit


def _image_folder(root, prompts, n=40):
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            arr = np.zeros((24, 20, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
            arr[6:14, 5:12] = rng.integers(0, 255, 3, dtype=np.uint8)
            Image.fromarray(arr).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": prompts[i % len(prompts)]}) + "\n")
    return root


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_image_mode_lowers_heldout_loss(tiny_sd, prompts, tmp_path):
    folder = _image_folder(tmp_path / "imgs", prompts)
    distill(tiny_sd, None, config=DistillConfig(steps=80, **FAST), images=folder, output_dir=tmp_path / "run")
    losses = _eval_losses(tmp_path / "run")
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_interrupted_resume_equals_uninterrupted(tiny_sd, prompts, tmp_path):
    cfg = DistillConfig(steps=20, **{**FAST, "checkpoint_every": 5})
    full = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "full")
    distill(
        tiny_sd,
        prompts,
        config=DistillConfig(steps=10, **{**FAST, "checkpoint_every": 5}),
        output_dir=tmp_path / "part",
    )
    resumed = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "part")
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    steps = [r["step"] for r in read_stats(tmp_path / "part") if "loss" in r]
    assert steps == sorted(set(steps)) == [5, 10, 15, 20]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_changed_settings_are_refused(tiny_sd, prompts, tmp_path):
    distill(tiny_sd, prompts, config=DistillConfig(steps=2, **FAST), output_dir=tmp_path / "run")
    with pytest.raises(InputError, match="different settings.*lr"):
        distill(
            tiny_sd,
            prompts,
            config=DistillConfig(steps=4, **{**FAST, "lr": 1e-4}),
            output_dir=tmp_path / "run",
        )
    split = DistillConfig(steps=4, **{**FAST, "batch_size": 4, "grad_accum": 2})  # same 8, split differently
    with pytest.raises(InputError, match=r"settings \(batch_size: 8 -> 4, grad_accum: 1 -> 2\)"):
        distill(tiny_sd, prompts, config=split, output_dir=tmp_path / "run")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_l2_loss_and_config_validation(tiny_sd, prompts, tmp_path):
    sharp = distill(
        tiny_sd, prompts, config=DistillConfig(steps=3, **{**FAST, "loss": "l2"}), output_dir=tmp_path / "r"
    )
    assert sharp.config["loss"] == "l2"
    with pytest.raises(InputError, match="loss"):
        DistillConfig(loss="huber")
    for bad in (0, -2, 1.5):
        with pytest.raises(InputError, match="grad_accum must be an integer >= 1"):
            DistillConfig(grad_accum=bad)
    with pytest.raises(InputError, match="needs prompts"):
        distill(tiny_sd, None, config=DistillConfig(steps=1, **FAST), output_dir=tmp_path / "x")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_initial_weights_depend_on_seed_only(tiny_sd, prompts, tmp_path):
    cfg = DistillConfig(steps=1, **FAST)
    torch.manual_seed(123)
    a = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "a")
    torch.manual_seed(456)
    b = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "b")
    assert same_weights(a, b)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_validation_grids_are_written(tiny_sd, prompts, tmp_path):
    cfg = DistillConfig(
        steps=2, **{**FAST, "validate_every": 1}, validation_prompts=("a red circle", "a blue square")
    )
    distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "run")
    grids = sorted(p.name for p in (tmp_path / "run" / "validation").glob("*.png"))
    assert grids == ["step_0000001.png", "step_0000002.png"]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_grad_accum_equals_one_big_batch(tiny_sd, prompts, tmp_path, monkeypatch):
    """batch 2 x grad_accum 3 = batch 6: the same gradients (one all-reduce per update), weights and logs."""
    import importlib
    import itertools
    import types

    from dicecfg.runs.parallel import Parallel

    d = importlib.import_module("dicecfg.training.loop")  # the training loop module

    grads = []

    def average_gradients(self, params):  # one process: records what the all-reduce would average
        grads.append([p.grad.clone() for p in params])

    monkeypatch.setattr(Parallel, "average_gradients", average_gradients)
    clock = itertools.count()  # every interval between two logs lasts one tick: samples/s = samples logged
    monkeypatch.setattr(d, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    negs = dict(negative_prompts=("a dog", "a cat"), negative_prob=0.5)  # c_neg is sliced like the batch
    out = {}
    for b, a in ((6, 1), (2, 3)):
        cfg = DistillConfig(steps=3, **{**FAST, "batch_size": b, "grad_accum": a, "log_every": 1}, **negs)
        out[a] = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / f"accum{a}")
    assert len(grads) == 6  # 3 updates per run
    for one, acc in zip(grads[:3], grads[3:], strict=True):
        for g1, g3 in zip(one, acc, strict=True):
            assert torch.allclose(g1, g3, rtol=1e-4, atol=1e-7), (g1 - g3).abs().max()
    for k, v in out[1].state_dict().items():
        assert torch.allclose(v, out[3].state_dict()[k], atol=1e-5), k
    stats1, stats3 = read_stats(tmp_path / "accum1"), read_stats(tmp_path / "accum3")
    assert [r["step"] for r in stats1] == [r["step"] for r in stats3] == [0, 1, 2, 3, 3]
    for x, y in zip(stats1, stats3, strict=True):
        for key in ("loss", "eval_loss"):
            if key in x:
                assert abs(x[key] - y[key]) <= 1e-5 * abs(x[key]), (key, x, y)
        assert x.get("samples_per_s") == y.get("samples_per_s")  # counts the whole batch of an update
    ident1 = json.loads((tmp_path / "accum1" / "run.json").read_text())["identity"]
    ident3 = json.loads((tmp_path / "accum3" / "run.json").read_text())["identity"]
    assert ident1["grad_accum"] == 1 and ident3["grad_accum"] == 3  # every setting is recorded


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_compiled_denoiser_trains_like_eager_and_may_be_toggled_on_resume(
    cheap_compile, tiny_sd, prompts, tmp_path
):
    """DistillConfig.compile: the same losses and weights as eager (the "eager" backend runs the same kernels; with
    Inductor they differ by float rounding), Dynamo sees the student's differentiated pass, and the option is not
    part of the run's identity."""
    from dicecfg.sampling import fast as fastmod

    seen = []
    real = fastmod.CompiledForward.__call__

    def spy(self, *a, **k):
        seen.append(torch.is_grad_enabled())
        return real(self, *a, **k)

    cfg = dict(FAST, checkpoint_every=2, log_every=1)
    eager = distill(tiny_sd, prompts, config=DistillConfig(steps=4, **cfg), output_dir=tmp_path / "eager")
    fastmod.CompiledForward.__call__ = spy
    try:
        compiled = distill(
            tiny_sd, prompts, config=DistillConfig(steps=2, compile=True, **cfg), output_dir=tmp_path / "c"
        )
    finally:
        fastmod.CompiledForward.__call__ = real
    assert cheap_compile == ["default"]  # torch.compile's default mode: no CUDA graphs
    assert True in seen and False in seen  # the student's differentiated pass and the teacher's
    assert "forward" not in tiny_sd.unet.__dict__  # restored after the run
    resumed = distill(tiny_sd, prompts, config=DistillConfig(steps=4, **cfg), output_dir=tmp_path / "c")
    a, b = read_stats(tmp_path / "eager"), read_stats(tmp_path / "c")
    assert [r["loss"] for r in a if "loss" in r] == [r["loss"] for r in b if "loss" in r]
    for x, y in zip(eager.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert compiled.config["train_steps"] == 2


def test_a_half_precision_denoiser_runs_in_its_own_dtype_inside_the_runs_autocast():
    """Inside the run's bf16 autocast, a denoiser whose weights are bf16 or fp16 runs autocast-free (its own
    precision: no float32 normalisations and their casts), a float32 one keeps autocast; ``Objective`` takes that
    context for its denoiser. (No bf16 arithmetic here: PyTorch's CPU bf16 matrix kernels fail on AVX-512 machines
    made to run the AVX2 kernels, as CI may.)"""
    from dicecfg.training.objective import own_precision

    for dtype, autocast_inside in ((torch.bfloat16, False), (torch.float16, False), (torch.float32, True)):
        module = torch.nn.Linear(2, 2).to(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16), own_precision(module)():
            assert torch.is_autocast_enabled("cpu") is autocast_inside, dtype


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_nan_loss_is_read_from_the_device_only_when_something_is_kept(
    tiny_sd, prompts, tmp_path, monkeypatch
):
    """The NaN / Inf check does not make the host wait for the device at every step (FiniteGuard): it is read
    when a step logs, evaluates or checkpoints, names the step whose loss diverged first, and the diverged update
    is never checkpointed."""
    import dicecfg.training.objective as objective
    from dicecfg.errors import TrainingDivergedError
    from dicecfg.runs.guards import FiniteGuard

    reads, real_check = [], FiniteGuard.check
    monkeypatch.setattr(FiniteGuard, "check", lambda self, saved, run_dir: reads.append(saved) or real_check(
        self, saved, run_dir))  # fmt: skip
    real, calls = objective.sample_loss, {"n": 0}

    def sample_loss(pred, target, kind):
        out = real(pred, target, kind)
        if out.requires_grad:
            calls["n"] += 1
            return out * float("nan") if calls["n"] == 7 else out
        return out

    monkeypatch.setattr(objective, "sample_loss", sample_loss)
    cfg = DistillConfig(steps=12, **{**FAST, "log_every": 5, "checkpoint_every": 5, "eval_every": 0})
    with pytest.raises(TrainingDivergedError, match=r"nan at step 7; the last good checkpoint \(step 5\)"):
        distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "run")
    assert reads == [0, 5]  # at steps 5 and 10 only, not at every step
    assert ckpt_step(tmp_path / "run") == 5  # the update of step 7 (and later) never reached a checkpoint


def test_finite_guard_keeps_the_first_diverged_step():
    from pathlib import Path

    from dicecfg.errors import TrainingDivergedError
    from dicecfg.runs.guards import FiniteGuard

    guard = FiniteGuard()
    guard.check(0, Path("run"))  # nothing added yet
    for step, value in enumerate([1.0, 2.0, float("inf"), float("nan"), 3.0], start=1):
        guard.add(torch.tensor(value), step)
    with pytest.raises(TrainingDivergedError, match=r"Loss became inf at step 3; .*\(step 2\)"):
        guard.check(2, Path("run"))


# ---- image folders with faults (docs/reliability.md) -------------------------------------------------------
def test_images_without_captions_skipped_with_count(tmp_path, caplog):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "0.txt").write_text("a red circle")
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        assert ImageCaptionFolder(tmp_path, 8).captions == ["a red circle"]
    assert any("skipped 2 images without a caption" in r.getMessage() for r in caplog.records)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_image_folder_skips_unreadable_converts_modes(tiny_sd, tmp_path, caplog):
    root = image_folder_with_faults(tmp_path / "imgs", 8, modes=("RGB", "RGBA", "L", "P", "LA"), bad=2)
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        folder = ImageCaptionFolder(root, 16)
    assert len(folder) == 8 and any("skipped 3 unreadable" in r.getMessage() for r in caplog.records)
    batch = folder.batch(list(range(8)))
    assert batch.shape == (8, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    cfg = DistillConfig(steps=2, **FAST_FAULTS)
    distill(tiny_sd, None, config=cfg, images=root, output_dir=tmp_path / "run")  # trains on what is usable
    with pytest.raises(InputError, match="none of its 3 captioned images can be read"):
        ImageCaptionFolder(image_folder_with_faults(tmp_path / "allbad", 0, bad=2), 16)


def test_metadata_lines_that_are_not_objects_are_one_line(tmp_path, capsys):
    """Issue 31 item 4: `5`, `null`, a list or a record without file_name in metadata.jsonl is an InputError
    naming file:line (a TypeError traceback before), through the one strict JSON-lines reader."""
    from dicecfg.training.data import ImageCaptionFolder

    root = image_folder_with_faults(tmp_path / "imgs", 2)
    meta = root / "metadata.jsonl"
    good = meta.read_text()
    for bad, words in (("5", "expected a JSON object"), ("null", "expected a JSON object"),
                       ("[1, 2]", "expected a JSON object"), ('{"text": "a"}', "missing 'file_name'"),
                       ("{oops", "invalid JSON")):  # fmt: skip
        meta.write_text(good + bad + "\n")
        n = len(good.splitlines()) + 1
        with pytest.raises(InputError, match=rf"metadata.jsonl:{n}: {re.escape(words)}"):
            ImageCaptionFolder(root, 16)
