"""The training recipes (docs/recipes.md): the block sharpener, loss weightings, the lr schedule, named recipes."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import FAST_RECIPE

from dicecfg import DistillConfig, Sharpener, distill, generate, load_pipeline
from dicecfg.cli import build_parser
from dicecfg.errors import InputError
from dicecfg.flags import from_flags
from dicecfg.runs.folder import read_stats
from dicecfg.training.config import RECIPES, lr_at, recipe_config
from dicecfg.training.job import TrainJob
from dicecfg.training.objective import sample_loss, x0_weight


def test_lr_schedule_warmup_and_cosine():
    cfg = DistillConfig(steps=100, lr=1.0, warmup=0.1, lr_schedule="cosine")
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0)  # decay starts after the warm-up
    assert lr_at(cfg, 55) == pytest.approx(0.5)  # half-way through the decay
    assert 0 < lr_at(cfg, 99) < 1e-3
    const = DistillConfig(steps=100, lr=2e-4)
    assert {lr_at(const, s) for s in (0, 50, 99)} == {2e-4}


def test_identity_holds_every_setting_and_pins_the_schedule_length():
    paper = DistillConfig().identity()
    assert {"arch", "lr_schedule", "warmup", "grad_accum", "time_edges"} <= set(
        paper
    )  # at their defaults too
    assert "steps" not in paper  # a constant schedule can grow on resume
    ours = recipe_config("dicecfg").identity()
    assert ours["arch"] == "block" and ours["shared_timestep"] is False
    assert "steps" in ours  # a cosine schedule cannot grow on resume
    with pytest.raises(InputError, match="Unknown recipe 'nope'"):
        recipe_config("nope")
    for bad in (dict(loss_weighting="snr"), dict(warmup=1.0), dict(grad_clip=-1), dict(arch="unet")):
        with pytest.raises(InputError):
            DistillConfig(**bad)


def _train_job(tmp_path, *argv: str) -> TrainJob:
    (tmp_path / "p.txt").write_text("a red circle\n")
    ns = build_parser().parse_args(
        ["train", "--out", str(tmp_path / "r"), "--prompts", str(tmp_path / "p.txt"), *argv]
    )
    return from_flags(ns, TrainJob)


def test_recipe_flag_starts_from_the_named_recipe_and_flags_override_it(tmp_path):
    assert _train_job(tmp_path).config == recipe_config("dicecfg")  # dice train's default recipe
    assert _train_job(tmp_path, "--recipe", "paper").config == DistillConfig()
    job = _train_job(tmp_path, "--shared-timestep", "--arch", "paper", "--steps", "7")
    assert job.config == recipe_config("dicecfg", shared_timestep=True, arch="paper", steps=7)
    assert set(RECIPES["dicecfg"]) <= {f for f in DistillConfig.__dataclass_fields__}


def test_block_sharpener_starts_as_identity_and_round_trips(tmp_path):
    torch.manual_seed(0)
    sharp = Sharpener(32, 64, 4, arch="block")
    c, neg = torch.randn(2, 77, 32), torch.randn(1, 77, 32)
    assert torch.equal(sharp.edit(c, neg), c)  # zero-initialised output layer: unguided sampling
    torch.nn.init.normal_(sharp.proj_out.weight)
    edit = sharp.edit(c, neg)
    assert torch.equal(edit[:, 0], c[:, 0]) and not torch.allclose(edit, c)
    # the block mixes tokens: changing one token moves the edit of another (the paper's network cannot)
    c2 = c.clone()
    c2[:, 5] += 1.0
    assert not torch.allclose(sharp.edit(c2, neg)[:, 9], edit[:, 9])
    sharp.save_pretrained(tmp_path / "s")
    loaded = Sharpener.from_pretrained(tmp_path / "s")
    assert loaded.config["arch"] == "block" and torch.equal(loaded.edit(c, neg), edit)
    n = sum(p.numel() for p in Sharpener(768, 512, 8, arch="block").parameters())
    assert n < 10_000_000 and sum(p.numel() for p in Sharpener(768).parameters()) == 1_836_800, n


def test_paper_sharpener_edits_each_token_alone_when_c_neg_is_fixed():
    torch.manual_seed(0)
    sharp = Sharpener(32, 64, 4)
    torch.nn.init.normal_(sharp.proj_out.weight)
    c, neg = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    c2 = c.clone()
    c2[:, 5] += 1.0
    assert torch.allclose(sharp.edit(c2, neg)[:, 9], sharp.edit(c, neg)[:, 9])


def test_x0_weight_is_the_error_of_the_implied_x0():
    torch.manual_seed(0)
    abar = torch.tensor([0.9, 0.3, 0.01])
    x_t, e1, e2 = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    a = abar.view(-1, 1, 1, 1)
    for kind, pred in (("epsilon", "eps"), ("v_prediction", "v")):
        if pred == "eps":
            x0 = lambda out: (x_t - (1 - a).sqrt() * out) / a.sqrt()  # noqa: E731
        else:
            x0 = lambda out: a.sqrt() * x_t - (1 - a).sqrt() * out  # noqa: E731
        for loss in ("l1", "l2"):
            want = sample_loss(x0(e1), x0(e2), loss)
            got = x0_weight(abar, kind, loss) * sample_loss(e1, e2, loss)
            assert torch.allclose(got, want, rtol=1e-4), (kind, loss)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_relative_loss_is_one_for_the_untrained_sharpener(tiny_sd, prompts, tmp_path):
    # before the first update the student is the unguided model: it misses all of CFG's correction
    cfg = DistillConfig(steps=1, loss_weighting="relative", **FAST_RECIPE)
    distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "run")
    first = next(r for r in read_stats(tmp_path / "run") if "loss" in r)
    assert first["loss"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart"])
def test_dicecfg_recipe_trains_and_loads_on_every_family(family, request, prompts, tmp_path):
    pipe = load_pipeline(request.getfixturevalue(f"tiny_{family}_dir"))
    cfg = recipe_config("dicecfg", steps=6, lr=3e-3, loss_weighting="x0", **FAST_RECIPE)
    sharp = distill(pipe, prompts, config=cfg, output_dir=tmp_path / "run")
    stats = read_stats(tmp_path / "run")
    assert [r["step"] for r in stats if "loss" in r] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) for r in stats if "loss" in r)
    loaded = Sharpener.from_pretrained(tmp_path / "run")
    assert loaded.config["arch"] == "block" and loaded.config["family"] == family

    def images(s):
        return np.stack([x.image for x in generate(pipe, prompts[:2], method="dice", sharpener=s, seeds=0,
                                                   num_inference_steps=2, progress=False)])  # fmt: skip

    assert np.array_equal(images(sharp), images(loaded))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_paper_run_resumed_under_the_new_default_says_how(tiny_sd_dir, prompts, tmp_path, capsys):
    """A run of the paper's recipe resumed without --recipe paper names the settings that differ; a run of the
    dicecfg recipe resumed with more steps says why its steps cannot grow (issue 33 row 18)."""
    from dicecfg.cli import main

    (tmp_path / "p.txt").write_text("\n".join(prompts))
    small = ["--batch-size", "4", "--teacher-pool", "8", "--teacher-steps", "2", "--eval-pairs", "4"]
    small += ["--inner-dim", "64", "--heads", "4", "--device", "cpu", "--steps", "1"]
    args = ["-q", "train", "--model", str(tiny_sd_dir), "--prompts", str(tmp_path / "p.txt"), *small]
    assert main([*args, "--recipe", "paper", "--out", str(tmp_path / "run")]) == 0
    assert (
        main([*args, "--out", str(tmp_path / "run")]) == 2
    )  # dice train's default is now the dicecfg recipe
    assert "lr_schedule: 'constant' -> 'cosine'" in capsys.readouterr().err
    assert main([*args, "--recipe", "paper", "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    assert main([*args, "--out", str(tmp_path / "ours")]) == 0
    assert main([*args[:-1], "2", "--out", str(tmp_path / "ours")]) == 2
    err = capsys.readouterr().err
    assert (
        "steps: 1 -> 2" in err
        and "learning-rate schedule (lr_schedule=cosine" in err
        and "--init-from" in err
    )


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_init_from_starts_where_the_given_sharpener_ended(tiny_sd, prompts, tmp_path):
    cfg = dict(FAST_RECIPE, lr=2e-3, eval_every=2)
    distill(tiny_sd, prompts, config=DistillConfig(steps=2, **cfg), output_dir=tmp_path / "a")
    tuned = DistillConfig(steps=2, init_from=str(tmp_path / "a"), **cfg)
    distill(tiny_sd, prompts, config=tuned, output_dir=tmp_path / "b")
    a = [r["eval_loss"] for r in read_stats(tmp_path / "a") if "eval_loss" in r]
    b = [r["eval_loss"] for r in read_stats(tmp_path / "b") if "eval_loss" in r]
    assert b[0] == a[-1] != a[0]  # the same held-out pairs: b starts from a's weights, not from the identity
    assert json.loads((tmp_path / "b" / "run.json").read_text())["identity"]["init_from"] == str(
        tmp_path / "a"
    )
    with pytest.raises(InputError, match="network differs .*inner_dim: 64 there, 32 here"):
        wide = DistillConfig(steps=1, init_from=str(tmp_path / "a"), **{**cfg, "inner_dim": 32})
        distill(tiny_sd, prompts, config=wide, output_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # refused before any file


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_init_from_a_sharpener_of_another_model_says_so(tiny_sd, tiny_pixart_dir, prompts, tmp_path):
    """A sharpener made for another base model (another family and text width) cannot be fixed by the network
    options: the refusal says what differs and that it was trained for another model."""
    from helpers import random_sharpener

    random_sharpener(load_pipeline(tiny_pixart_dir)).save_pretrained(tmp_path / "pixart")
    cfg = DistillConfig(steps=1, init_from=str(tmp_path / "pixart"), **FAST_RECIPE)
    with pytest.raises(InputError, match="trained for another model") as err:
        distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "run")
    msg = str(err.value)
    assert "family: 'pixart' there, 'sd' here" in msg and "tokens: 120 there, 77 here" in msg
    assert "--inner-dim" not in msg and "\n" not in msg
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
