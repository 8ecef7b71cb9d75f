"""The speed options of `dice train` that do not change the recipe (docs/recipes.md, "Speed options"): each one
trains like the default up to float rounding and may change between a run and its resume."""

import re

import pytest
import torch
from helpers import FAST_FAULTS, bench_script
from safetensors import safe_open

from dicecfg import DistillConfig, distill
from dicecfg.runs.folder import CHECKPOINT, read_stats

SMALL = dict(FAST_FAULTS, checkpoint_every=2, eval_every=0)  # every step logged, a checkpoint every 2


def _groups(run_dir) -> list[dict]:
    """The optimizer's param groups as the run folder's checkpoint records them."""
    import json

    with safe_open(str(run_dir / CHECKPOINT), framework="pt") as f:
        return json.loads(f.metadata()["param_groups"])


def test_the_sharpeners_adamw_is_fused_only_where_every_parameter_is_on_cuda():
    from dicecfg.training.loop import fused_for, new_optimizer

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert fused_for([cuda, torch.device("cuda", 1)]) and fused_for(["cuda"])
    assert not fused_for([cuda, cpu]) and not fused_for([cpu]) and not fused_for([])
    cfg = DistillConfig(lr=3e-4, weight_decay=0.05)
    (group,) = new_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg).param_groups
    assert group["fused"] is None and group["lr"] == 3e-4 and group["weight_decay"] == 0.05  # CPU: as before


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("first", ["unfused", "fused"])
def test_a_checkpoint_resumes_across_fused_and_unfused_adamw(first, tiny_sd, prompts, tmp_path, monkeypatch):
    """A run saved with one AdamW implementation resumes with the other (an H100 run resumed on a CPU, or the
    other way round), in the resuming process's own implementation, and ends where an uninterrupted run ends up
    to float rounding. PyTorch's fused AdamW also runs on a CPU, so the test forces it there."""
    import dicecfg.training.loop as loop

    def run(fused: bool, steps: int, out: str):
        monkeypatch.setattr(loop, "fused_for", lambda devices: fused)
        return distill(
            tiny_sd, prompts, config=DistillConfig(steps=steps, **SMALL), output_dir=tmp_path / out
        )

    full = run(first == "fused", 4, "full")
    run(first == "fused", 2, "part")
    assert bool(_groups(tmp_path / "part")[0]["fused"]) is (first == "fused")
    resumed = run(first != "fused", 4, "part")
    assert bool(_groups(tmp_path / "part")[0]["fused"]) is (
        first != "fused"
    )  # the live one, not the saved one
    # Adam divides by the root of the second moment, so rounding differences of small gradients grow to ~1e-6;
    # a resume that lost the moments or the step count would be off by about the learning rate (2e-3)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=SMALL["lr"] / 20), (k, (a - b).abs().max())


def test_speed_options_are_checked_and_left_out_of_a_runs_identity():
    from dicecfg.errors import InputError

    for bad, words in (
        (dict(compile_mode="fast"), "--compile-mode (compile_mode) must be one of default, reduce-overhead"),
        (
            dict(compile=False, compile_mode="reduce-overhead"),
            "needs compiling, which compile=False turns off",
        ),
        (dict(channels_last="yes"), "channels_last must be True, False or None (got 'yes')"),
        (dict(compile=1), "compile must be True, False or None (got 1)"),
    ):
        with pytest.raises(InputError, match=re.escape(words)):
            DistillConfig(**bad)
    fast = DistillConfig(compile=True, compile_mode="max-autotune-no-cudagraphs", channels_last=True)
    assert fast.identity() == DistillConfig().identity()  # a run may resume with other values


def test_speed_options_on_the_command_line(tmp_path, capsys):
    from dicecfg.cli import build_parser, main
    from dicecfg.flags import from_flags
    from dicecfg.training.job import TrainJob

    ns = build_parser().parse_args(
        ["train", "--out", str(tmp_path / "r"), "--compile-mode", "reduce-overhead", "--channels-last"]
    )
    config = from_flags(ns, TrainJob).config
    assert (config.compile, config.compile_mode, config.channels_last) == (None, "reduce-overhead", True)
    ns = build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--no-channels-last"])
    assert from_flags(ns, TrainJob).config.channels_last is False
    argv = ["-q", "train", "--no-compile", "--compile-mode", "reduce-overhead", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "dice: error: DistillConfig: compile_mode='reduce-overhead' needs compiling, which compile=False turns "
        "off; drop --no-compile or --compile-mode."
    ]


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_stats(run_dir) if "loss" in r]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_channels_last_trains_like_the_loaded_layout_and_may_be_toggled_on_resume(tiny_sd, prompts, tmp_path):
    """DistillConfig.channels_last: the student's passes see channels_last weights and latents, the losses equal
    those of the layout as loaded up to float rounding, the weights go back after the run, and a run resumes
    without it."""
    seen = []

    def layouts(module, args, kwargs):
        if torch.is_grad_enabled():  # the student's passes (the teacher's run without gradients)
            sample = args[0] if args else kwargs["sample"]
            cl = torch.channels_last
            seen.append(
                (
                    sample.is_contiguous(memory_format=cl),
                    module.conv_in.weight.is_contiguous(memory_format=cl),
                )
            )

    tiny_sd.unet.register_forward_pre_hook(layouts, with_kwargs=True)
    plain = distill(tiny_sd, prompts, config=DistillConfig(steps=4, **SMALL), output_dir=tmp_path / "plain")
    assert seen and not any(a or b for a, b in seen)
    seen.clear()
    distill(
        tiny_sd,
        prompts,
        config=DistillConfig(steps=2, channels_last=True, **SMALL),
        output_dir=tmp_path / "cl",
    )
    assert seen and all(a and b for a, b in seen)
    assert tiny_sd.unet.conv_in.weight.is_contiguous()  # back as loaded
    resumed = distill(tiny_sd, prompts, config=DistillConfig(steps=4, **SMALL), output_dir=tmp_path / "cl")
    assert _losses(tmp_path / "cl") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-4)
    for (k, a), b in zip(plain.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=SMALL["lr"] / 20), (k, (a - b).abs().max())


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_compile_mode_reaches_torch_compile_and_trains_like_eager(cheap_compile, tiny_sd, prompts, tmp_path):
    """DistillConfig.compile_mode is torch.compile's mode for the training denoiser (the cheap "eager" backend
    here: Inductor takes minutes on a CPU), with channels_last the layout the graph is traced for; the losses
    equal eager's up to float rounding."""
    eager = distill(tiny_sd, prompts, config=DistillConfig(steps=2, **SMALL), output_dir=tmp_path / "eager")
    cfg = DistillConfig(
        steps=2, compile=True, compile_mode="max-autotune-no-cudagraphs", channels_last=True, **SMALL
    )
    fast = distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "fast")
    assert cheap_compile == ["max-autotune-no-cudagraphs"]
    assert "forward" not in tiny_sd.unet.__dict__ and tiny_sd.unet.conv_in.weight.is_contiguous()
    assert _losses(tmp_path / "fast") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)
    for (k, a), b in zip(eager.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=SMALL["lr"] / 20), (k, (a - b).abs().max())


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_compile_mode_without_compiling_says_it_has_no_effect(tiny_sd, prompts, tmp_path, caplog):
    import logging

    cfg = DistillConfig(steps=1, compile_mode="reduce-overhead", **SMALL)  # compile unset: eager on a CPU
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "run")
    assert any(
        "compile_mode='reduce-overhead' has no effect: the denoiser runs eager on cpu" in r.getMessage()
        for r in caplog.records
    )


def _where_time_goes():
    """benchmarks/speed_profile/where_time_goes.py as a module."""
    study = bench_script("speed_profile/where_time_goes.py")
    return study


def test_padding_attention_heads_to_64_leaves_attention_unchanged():
    """where_time_goes.py's pad64 variant: heads narrower than 64 padded with zeros give the same attention (and
    gradients); wider heads pass through."""
    import torch.nn.functional as F

    padded = _where_time_goes().padded_sdpa(F.scaled_dot_product_attention)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7 if i == 0 else 5, 40, generator=gen, requires_grad=True) for i in range(3))
    mask = torch.randn(2, 1, 7, 5, generator=gen)
    out, ref = padded(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-6)
    (g1,) = torch.autograd.grad(out.square().sum(), q)
    (g2,) = torch.autograd.grad(ref.square().sum(), q)
    assert torch.allclose(g1, g2, atol=1e-5)
    wide = torch.randn(1, 2, 4, 64, generator=gen)
    assert torch.equal(padded(wide, wide, wide), F.scaled_dot_product_attention(wide, wide, wide))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_where_time_goes_variants_run_on_a_cpu(tiny_sd_dir):
    """The speed profile's distill rows on the tiny pipeline: variants are checked, the AdamW forced fused and the
    padded attention train like the plain ones, and the row says what ran."""
    study = _where_time_goes()
    for bad, words in (
        ("fast", "unknown variant"),
        ("eager,ro", "eager excludes ro"),
        ("ro,mat", "excludes"),
    ):
        with pytest.raises(SystemExit, match=words):
            study.parse_variants(bad)
    common = ["distill", "--model", str(tiny_sd_dir), "--device", "cpu", "--batch-size", "4", "--steps", "5"]
    plain = study.main([*common, "--variant", "eager", "--no-eval"])
    other = study.main([*common, "--variant", "eager,pad64,fusedadam", "--no-eval"])
    assert (plain["adam_fused"], other["adam_fused"]) == (False, True) and not other["interrupted"]
    assert plain["eval_losses"] == [] and len(plain["losses"]) == 1
    assert other["losses"] == pytest.approx(plain["losses"], rel=1e-4)


def test_the_speed_profiles_variants_are_all_documented():
    from pathlib import Path

    study = _where_time_goes()
    readme = (Path(study.__file__).parent / "README.md").read_text()
    for name in study.VARIANTS:
        assert f"``{name}``" in study.__doc__ and f"`{name}`" in readme, name
