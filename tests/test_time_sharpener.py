"""A sharpener whose edit is a smooth function of the timestep (``time_embed="sinusoidal"``): the identity at
init, edits that follow t, old files unchanged, sampling at each step's own timestep in one sharpener call,
training and resume, the options' checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FAST_RECIPE, random_sharpener, same_weights

from dicecfg import DistillConfig, Sharpener, distill, enable_dice, generate, load_pipeline, sharpen
from dicecfg.errors import InputError, SharpenerLoadError
from dicecfg.families import family_of
from dicecfg.runs.folder import read_stats
from dicecfg.sampling.methods import Dice, edits_at, sharpen_cond

TIMED = dict(time_embed="sinusoidal", time_width=16)


def timed_like(static: Sharpener, mlp_std: float = 0.0, **options) -> Sharpener:
    """A continuous-time sharpener with ``static``'s network and weights; its time MLP's last layer zero
    (``mlp_std`` 0: as made) or random."""
    cfg = {k: v for k, v in static.config.items() if k not in ("dicecfg_version", "sampling")}
    timed = Sharpener(**{**cfg, **TIMED, **options})
    missing = timed.load_state_dict(static.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [f"time_mlp.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    if mlp_std:
        torch.manual_seed(1)
        torch.nn.init.normal_(timed.time_mlp[2].weight, std=mlp_std)
        torch.nn.init.normal_(timed.time_mlp[2].bias, std=mlp_std)
    return timed


def trained(arch: str, std: float = 0.1) -> Sharpener:
    torch.manual_seed(0)
    s = Sharpener(32, 64, 4, arch=arch)
    for p in s.parameters():
        torch.nn.init.normal_(p, std=std)
    return s


# ---- the network --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["paper", "block"])
def test_untrained_is_the_identity_and_a_zero_time_mlp_the_static_edit(arch):
    c, cn = torch.randn(3, 77, 32), torch.randn(1, 77, 32)
    t = torch.tensor([999.0, 500.0, 1.0])
    assert torch.equal(Sharpener(32, 64, 4, arch=arch, **TIMED).edit(c, cn, t=t), c)  # as made: c' = c
    static = trained(arch)
    mask = torch.ones(1, 77, dtype=torch.long)
    mask[:, 40:] = 0  # a masked c_neg (PixArt) is read alike
    for neg_mask in (None, mask):
        want = static.edit(c, cn, neg_mask=neg_mask)
        assert not torch.equal(want, c)
        assert torch.equal(timed_like(static).edit(c, cn, neg_mask=neg_mask, t=t), want)  # bit for bit


@pytest.mark.parametrize("arch", ["paper", "block"])
def test_the_edit_follows_the_timestep_smoothly_and_row_by_row(arch):
    """(The paper's network takes t through its attention weights alone: weights of 0.3 make them peaked.)"""
    timed = timed_like(trained(arch, std=0.3), mlp_std=0.3)
    c, cn = torch.randn(1, 77, 32), torch.randn(1, 77, 32)

    def edit(t: float) -> torch.Tensor:
        return timed.edit(c, cn, t=torch.tensor([t]))

    far, near = (edit(900.0) - edit(100.0)).abs().max(), (edit(500.0) - edit(501.0)).abs().max()
    assert far > 1.0 and near < far / 3  # it depends on t, and smoothly (the shortest period: 20 timesteps)
    assert torch.equal(edit(300.0), edit(300.0))
    rows = timed.edit(c.expand(3, -1, -1), cn, t=torch.tensor([900.0, 500.0, 100.0]))  # one t per row
    for i, t in enumerate((900.0, 500.0, 100.0)):
        assert torch.allclose(rows[i : i + 1], edit(t), atol=1e-4)  # up to rounding
    with pytest.raises(ValueError, match="pass t"):
        timed.edit(c, cn)


def test_options_are_checked_and_name_the_fix(tmp_path):
    for bad, words in (
        (dict(time_embed="cosine"), "time_embed must be one of none, sinusoidal"),
        (dict(time_embed="sinusoidal", time_width=7), "even integer >= 2"),
        (dict(time_embed="sinusoidal", time_edges=[500.0]), "give one of them"),
    ):
        with pytest.raises(ValueError, match=words):
            Sharpener(32, 64, 4, **bad)
    for bad, words in (
        (dict(time_embed="cosine"), "--time-embed (time_embed) must be one of none, sinusoidal"),
        (dict(time_embed="sinusoidal", time_width=7), "time_width must be even"),
        (dict(time_width=0), "--time-width (time_width) must be >= 2"),
        (dict(time_embed="sinusoidal", time_edges=(500.0,)), "give one (--time-edges or --time-embed)"),
        (dict(t_weighting="snr"), "--t-weighting (t_weighting) must be one of uniform, noisy, steps"),
        (dict(t_steps=0), "--t-steps (t_steps) must be >= 1"),
    ):
        with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
            DistillConfig(**bad)
    Sharpener(32, 64, 4, **TIMED).save_pretrained(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    (tmp_path / "s" / "config.json").write_text(json.dumps({**config, "time_width": 5}))
    with pytest.raises(
        SharpenerLoadError, match="does not describe a sharpener .*time_width must be an even integer"
    ):
        Sharpener.from_pretrained(tmp_path / "s")


def test_save_load_round_trip(tmp_path):
    timed = timed_like(trained("block"), mlp_std=0.3)
    timed.save_pretrained(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (config["time_embed"], config["time_width"]) == ("sinusoidal", 16)
    back = Sharpener.from_pretrained(tmp_path / "s")
    assert back.config == timed.config and same_weights(back, timed) and back.time_dependent
    assert [k for k in back.state_dict() if k.startswith("time")] == [
        "time_mlp.0.weight", "time_mlp.0.bias", "time_mlp.2.weight", "time_mlp.2.bias",
    ]  # fmt: skip
    c, cn, t = torch.randn(2, 77, 32), torch.randn(1, 77, 32), torch.tensor([800.0, 20.0])
    assert torch.equal(back.edit(c, cn, t=t), timed.edit(c, cn, t=t))
    card = (tmp_path / "s" / "README.md").read_text()  # its usage: enable_dice, which sharpen() cannot replace
    assert "r(c, c_neg, t)" in card and "enable_dice(pipe, sharp)(" in card and "sharpen(pipe" not in card


# ---- files of sharpeners without the option --------------------------------------------------------------------
def reference_delta(s: Sharpener, c, c_neg, offset=0.0) -> torch.Tensor:
    """r(c, c_neg) written out from the module docstring's equations with the sharpener's own layers: what the
    static path computed before time options existed, op for op."""

    def attend(q, k, v, mask=None):
        b, n, _ = q.shape
        q, k, v = (x.view(b, x.shape[1], s.heads, -1).transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, -1)

    c_neg = c_neg.expand(c.shape[0], -1, -1)
    if s.config["arch"] == "paper":
        h, m = F.relu(s.proj_in(c) + offset), F.relu(s.proj_in(c_neg))
        return s.proj_out(F.relu(s.attn_out(attend(s.to_q(h), s.to_k(m), s.to_v(m)))))
    h = s.proj_in(c) + offset
    m = s.norm_kv(s.proj_in(c_neg))
    q, k, v = s.self_qkv(s.norm_self(h)).chunk(3, dim=-1)
    h = h + s.self_out(attend(q, k, v))
    x = s.norm_cross(h)
    h = h + s.attn_out(attend(s.to_q(x), s.to_k(m), s.to_v(m)))
    return s.proj_out(h + s.mlp(s.norm_mlp(h)))


def test_old_sharpener_files_load_unchanged_and_edit_bit_for_bit(tmp_path):
    """The shipped sharpener (written before time options existed), a paper-network one and a time-block one:
    no time MLP, no new config keys when saved again, and edits equal to the static equations op for op."""
    from dicecfg.assets import shipped_sharpener_dir

    shipped_keys = set(json.loads((shipped_sharpener_dir("mini") / "config.json").read_text()))
    mini = Sharpener.from_pretrained("mini").float()
    assert not mini.time_dependent and not hasattr(mini, "time_mlp") and set(mini.config) == shipped_keys
    mini.save_pretrained(tmp_path / "again")
    assert set(json.loads((tmp_path / "again" / "config.json").read_text())) == shipped_keys
    torch.manual_seed(0)
    c, cn = torch.randn(2, 77, mini.dim), torch.randn(1, 77, mini.dim)
    with torch.no_grad():
        assert torch.equal(mini(c, cn), reference_delta(mini, c, cn))
        paper = trained("paper")
        c32, cn32 = torch.randn(2, 77, 32), torch.randn(1, 77, 32)
        assert torch.equal(paper(c32, cn32), reference_delta(paper, c32, cn32))
        blocks = Sharpener(32, 64, 4, arch="block", time_edges=[700.0, 400.0])
        for p in blocks.parameters():
            torch.nn.init.normal_(p, std=0.1)
        t = torch.tensor([900.0, 100.0])
        offset = blocks.time_embed[torch.tensor([0, 2])][:, None, :]
        assert torch.equal(blocks(c32, cn32, t=t), reference_delta(blocks, c32, cn32, offset))
    blocks.save_pretrained(tmp_path / "blocks")
    saved = json.loads((tmp_path / "blocks" / "config.json").read_text())
    assert "time_edges" in saved and not {"time_embed", "time_width"} & set(saved)


# ---- sampling --------------------------------------------------------------------------------------------------
P = ["a red circle", "a large blue square"]


def images(pipe, method, prompts=P, seeds=(3, 4), steps=6, **kw):
    out = list(generate(pipe, prompts, method=method, seeds=list(seeds), num_inference_steps=steps,
                        progress=False, **kw))  # fmt: skip
    return np.stack([s.image for s in out])


def spy_t(sharpener: Sharpener) -> list[list[float]]:
    """The timesteps of each call of the sharpener from now on (an instance attribute over its forward)."""
    calls: list[list[float]] = []
    forward = sharpener.forward

    def spying(c, c_neg, neg_mask=None, t=None):
        calls.append([] if t is None else t.tolist())
        return forward(c, c_neg, neg_mask, t)

    sharpener.forward = spying
    return calls


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart"])
def test_dice_edits_at_each_steps_timestep_in_one_sharpener_call(family, request):
    """Every family, with a negative prompt: a zero time MLP samples the static sharpener's images exactly; a
    trained one is called once per pipeline call with every step's timestep (the scheduler's, for each row), and
    its images are those of the stock pipeline switched to each step's edit."""
    pipe = load_pipeline(request.getfixturevalue(f"tiny_{family}_dir"))
    fam = family_of(pipe)
    static = random_sharpener(pipe)  # (weights of 0.3: t acts on the paper's network through its attention)
    neg = dict(negative_prompt="green")
    assert np.array_equal(images(pipe, Dice(timed_like(static)), **neg), images(pipe, Dice(static), **neg))
    timed = timed_like(static, mlp_std=0.5)
    calls = spy_t(timed)
    got = images(pipe, Dice(timed), prompts=P[:1], seeds=[2], **neg)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    assert len(ts) == 6 and calls == [ts]  # one call: a row per step, at the scheduler's timesteps
    assert not np.array_equal(got, images(pipe, Dice(static), prompts=P[:1], seeds=[2], **neg))

    cond, negc = fam.encode(pipe, P[:1]), fam.encode(pipe, ["green"])
    edits = edits_at(fam, timed, cond, negc, 1.0, torch.tensor(ts))

    def switch(p, i, t, kw):
        return {"prompt_embeds": edits[i + 1].embeds} if i + 1 < len(ts) else {}

    if family == "pixart":  # no callback that swaps prompt_embeds: compare with the same guide's enable_dice
        enable_dice(pipe, timed)
        ref = pipe(P[0], negative_prompt="green", num_inference_steps=6, output_type="np",
                   generator=torch.Generator().manual_seed(2)).images  # fmt: skip
    else:
        ref = pipe(**fam.pipeline_kwargs(pipe, edits[0]), guidance_scale=1.0, num_inference_steps=6,
                   output_type="np", generator=torch.Generator().manual_seed(2), callback_on_step_end=switch,
                   callback_on_step_end_tensor_inputs=["prompt_embeds"]).images  # fmt: skip
    assert np.array_equal(got, (np.clip(ref, 0, 1) * 255).round().astype(np.uint8))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_an_interval_edits_only_its_steps_and_enable_dice_samples_the_same(tiny_sd):
    timed = timed_like(random_sharpener(tiny_sd, std=0.1), mlp_std=0.5)
    calls = spy_t(timed)
    got = images(tiny_sd, Dice(timed, stop=0.5), prompts=P, seeds=[3, 4])
    ts = [float(t) for t in tiny_sd.scheduler.timesteps]
    assert calls == [[t for t in ts[:3] for _ in P]]  # the first 3 of 6 steps, each for both rows
    calls.clear()
    enable_dice(tiny_sd, timed, stop=0.5)
    out = tiny_sd(P, num_inference_steps=6, output_type="np",
                  generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images  # fmt: skip
    assert calls == [[t for t in ts[:3] for _ in P]]
    assert np.array_equal(got, (np.clip(out, 0, 1) * 255).round().astype(np.uint8))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_callers_of_one_edit_per_prompt_refuse_in_one_line(tiny_sd, tmp_path):
    timed = timed_like(random_sharpener(tiny_sd, std=0.1), mlp_std=0.5)
    with pytest.raises(
        InputError, match=r"sharpen\(\) cannot apply .*time_embed=sinusoidal.*generate"
    ) as err:
        sharpen(tiny_sd, timed, "a red circle")
    assert "\n" not in str(err.value)
    plain = tiny_sd.encode_prompt("a red circle", "cpu", 1, False)[0]
    assert torch.equal(sharpen(tiny_sd, timed, "a red circle", alpha=0.0)["prompt_embeds"], plain)  # no edit
    fam = family_of(tiny_sd)
    cond = fam.encode(tiny_sd, ["a red circle"])
    with pytest.raises(InputError, match="depends on the timestep.*no one edit per prompt"):
        sharpen_cond(fam, timed, cond, fam.encode(tiny_sd, [""]))
    from dicecfg.training.ceiling import CeilingConfig, measure_ceiling

    with pytest.raises(InputError, match="dice ceiling compares one fixed edit per prompt"):
        measure_ceiling(tiny_sd, fam, ["a red circle"], [0], None, CeilingConfig(steps=1), timed, tmp_path)


# ---- training ----------------------------------------------------------------------------------------------
@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_training_runs_resumes_exactly_and_records_the_option(tiny_sd, prompts, tmp_path):
    opts = dict(FAST_RECIPE, lr=3e-3, shared_timestep=False, checkpoint_every=2, **TIMED)
    full = distill(tiny_sd, prompts, config=DistillConfig(steps=4, **opts), output_dir=tmp_path / "full")
    distill(tiny_sd, prompts, config=DistillConfig(steps=2, **opts), output_dir=tmp_path / "part")
    resumed = distill(tiny_sd, prompts, config=DistillConfig(steps=4, **opts), output_dir=tmp_path / "part")
    assert same_weights(full, resumed) and full.time_mlp[2].weight.abs().sum() > 0  # the time MLP learned
    assert [r["step"] for r in read_stats(tmp_path / "part") if "loss" in r] == [1, 2, 3, 4]
    loaded = Sharpener.from_pretrained(tmp_path / "full")
    assert loaded.config["time_embed"] == "sinusoidal" and same_weights(loaded, full)
    identity = json.loads((tmp_path / "full" / "run.json").read_text())["identity"]
    assert identity["time_embed"] == "sinusoidal" and identity["time_width"] == 16
    plain = {k: v for k, v in opts.items() if k not in TIMED}
    with pytest.raises(InputError, match=r"time_embed: 'sinusoidal' -> not recorded \(default\)"):
        distill(tiny_sd, prompts, config=DistillConfig(steps=4, **plain), output_dir=tmp_path / "full")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_init_from_checks_the_time_options(tiny_sd, prompts, tmp_path):
    """A static sharpener may start a continuous-time one (it starts from the same edit at every t); a
    continuous-time one must be continued with its own time options."""
    opts = dict(FAST_RECIPE, lr=3e-3, eval_every=2)
    static = distill(tiny_sd, prompts, config=DistillConfig(steps=2, **opts), output_dir=tmp_path / "a")
    cfg = DistillConfig(steps=2, init_from=str(tmp_path / "a"), **opts, **TIMED)
    distill(tiny_sd, prompts, config=cfg, output_dir=tmp_path / "b")
    a = [r["eval_loss"] for r in read_stats(tmp_path / "a") if "eval_loss" in r]
    b = [r["eval_loss"] for r in read_stats(tmp_path / "b") if "eval_loss" in r]
    assert b[0] == a[-1] and static.time_dependent is False
    for other, words in (
        ({}, "time_embed: 'sinusoidal' of width 16 there, 'none' here"),
        (
            {**TIMED, "time_width": 8},
            "time_embed: 'sinusoidal' of width 16 there, 'sinusoidal' of width 8 here",
        ),
    ):
        bad = DistillConfig(steps=1, init_from=str(tmp_path / "b"), **{**opts, **other})
        with pytest.raises(InputError, match=f"network differs .*{words}.*--time-embed, --time-width"):
            distill(tiny_sd, prompts, config=bad, output_dir=tmp_path / "c")


def test_timestep_weightings_draw_where_they_say(tiny_sd):
    """uniform: the paper's draw, bit for bit; noisy: 3/4 of the draws in the noisier half; steps: only the
    timesteps of the sampling schedule, inside --t-range; a window without any is refused."""
    from dicecfg.training.sources import XtSource, schedule_timesteps

    fam = family_of(tiny_sd)

    def draws(**options) -> torch.Tensor:
        source = XtSource(tiny_sd, fam, DistillConfig(**options), (4, 8, 8))
        return source.timesteps(torch.Generator().manual_seed(5), 4000)

    assert torch.equal(draws(), torch.randint(0, 1000, (4000,), generator=torch.Generator().manual_seed(5)))
    noisy = draws(t_weighting="noisy")
    assert noisy.dtype == torch.long and 0 <= noisy.min() and noisy.max() <= 999
    assert 0.72 < (noisy >= 500).float().mean() < 0.78
    window = draws(t_weighting="noisy", t_range=(0.5, 1.0))
    assert window.min() >= 500 and 0.72 < (window >= 750).float().mean() < 0.78
    steps = draws(t_weighting="steps", t_steps=10)
    assert set(steps.tolist()) == {int(t) for t in schedule_timesteps(tiny_sd, 10)}
    late = draws(t_weighting="steps", t_steps=10, t_range=(0.8, 1.0))
    assert set(late.tolist()) == {int(t) for t in schedule_timesteps(tiny_sd, 10) if t >= 800}
    with pytest.raises(InputError, match="none of the 2 sampling steps.*Widen --t-range or raise --t-steps"):
        draws(t_weighting="steps", t_steps=2, t_range=(0.2, 0.4))


def test_identity_leaves_the_new_options_out_at_their_defaults():
    """Runs made before the options existed resume: at their defaults they are not part of a run's identity."""
    assert not {"time_embed", "time_width", "t_weighting", "t_steps"} & set(DistillConfig().identity())
    assert {"time_embed", "time_width"} <= set(DistillConfig(**TIMED).identity())
    assert "t_steps" not in DistillConfig(t_weighting="noisy").identity()
    assert DistillConfig(t_weighting="steps").identity()["t_steps"] == 20


# ---- bench -------------------------------------------------------------------------------------------------
@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bench_times_every_edit_of_a_continuous_time_sharpener(tiny_sd_dir):
    from dicecfg.bench.speed import BenchConfig, run_bench
    from dicecfg.evaluation.report import bench_table

    common = dict(model=str(tiny_sd_dir), batch_sizes=(2,), steps=4, repeats=1, warmup=0, device="cpu",
                  decode=False, peer_stop=0.0)  # fmt: skip
    (row,) = run_bench(BenchConfig(time_embed="sinusoidal", fast="graphs", **common))  # eager on a CPU
    assert row["time_embed"] == "sinusoidal" and row["sharpener_edits"] == 4
    assert row["sharpener_ms"] > 0 and row["sharpener_call_ms"] > 0
    assert row["fast_sharpener_pct"] == pytest.approx(100 * row["sharpener_ms"] / row["fast_dice_ms"])
    (static,) = run_bench(BenchConfig(**common))
    assert static["time_embed"] == "none" and static["sharpener_edits"] == 1
    assert "| edits/image |" in bench_table([row, static])
    with pytest.raises(InputError, match="--time-edges and --time-embed"):
        run_bench(BenchConfig(time_embed="sinusoidal", time_edges=(500.0,), **common))
