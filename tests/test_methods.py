"""Methods as objects, step intervals, Adaptive Guidance, time-shaped edits and recorded sampling settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import random_sharpener

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.errors import InputError
from dicecfg.families import family_of
from dicecfg.sampling.methods import (
    CFG,
    AdaptiveGuidance,
    Dice,
    Scaling,
    Unguided,
    implied_x0_cosine,
)
from dicecfg.sampling.spelling import as_method, parse_method
from dicecfg.sampling.steps import guided_steps

P = ["a red circle", "a large blue square"]


def images(pipe, method, prompts=P, seeds=(3, 4), steps=10, **kw):
    out = list(generate(pipe, prompts, method=method, seeds=list(seeds), num_inference_steps=steps,
                        progress=False, **kw))  # fmt: skip
    return np.stack([s.image for s in out]), [s.nfe for s in out]


def first_layer(pipe):
    """The denoiser's first layer: its forward hook sees the rows that really ran (the router may run fewer
    than the pipeline passed to the denoiser)."""
    den = family_of(pipe).denoiser(pipe)
    return den.conv_in if hasattr(den, "conv_in") else den.pos_embed


@pytest.fixture(scope="module")
def pipes(tiny_sd_dir, tiny_sdxl_dir, tiny_pixart_dir):
    return {
        "sd": load_pipeline(tiny_sd_dir),
        "sdxl": load_pipeline(tiny_sdxl_dir),
        "pixart": load_pipeline(tiny_pixart_dir),
    }


def test_guided_steps_follow_the_diffusers_rule():
    assert list(guided_steps(0.0, 0.1, 20)) == [0, 1]
    assert list(guided_steps(0.25, 0.5, 20)) == [5, 6, 7, 8, 9]
    assert list(guided_steps(0.0, 1.0, 7)) == list(range(7))
    assert CFG(stop=0.1).nfe(20) == 22 and CFG(start=0.5).nfe(20) == 30 and CFG(1.0, stop=0.1).nfe(20) == 20


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CFG(start=0.5, stop=0.5), "start .* below stop"),
        (lambda: CFG(start=0.6, stop=0.2), "start .* below stop"),
        (lambda: CFG(stop=1.5), r"in \[0, 1\]"),
        (lambda: CFG(start=-0.1), r"in \[0, 1\]"),
        (lambda: CFG(stop=float("nan")), "finite"),
        (lambda: CFG(guidance_scale=0.5), "below 1"),
        (lambda: AdaptiveGuidance(threshold=0.0), r"\(0, 1\]"),
        (lambda: AdaptiveGuidance(threshold=1.5), r"\(0, 1\]"),
        (lambda: AdaptiveGuidance(threshold=float("nan")), "finite"),
        (lambda: Scaling(scale=float("inf")), "finite"),
        (lambda: Dice(None), "needs a sharpener"),
        (lambda: parse_method("cfg:w=5,foo=1"), "not a setting of cfg"),
        (lambda: parse_method("cfg:w=five"), "must be a number"),
        (lambda: parse_method("guided"), "Unknown method"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(InputError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


def test_spellings_round_trip():
    for text in (
        "cfg:w=7,stop=0.1",
        "cfg:start=0.25,stop=0.5",
        "ag:threshold=0.995",
        "scaling:s=1.5",
        "unguided",
    ):
        cls, settings = parse_method(text)
        assert cls(**settings).spec == text
    assert as_method("cfg:w=7") == CFG(7.0) and as_method("unguided") == Unguided()
    assert CFG(0.0 + 5.0000001).spec == "cfg:w=5.0000001"  # every digit: read back as the same value
    assert parse_method(CFG(5.0000001).spec)[1] == {"guidance_scale": 5.0000001}


def test_each_entry_point_parses_a_method_spelling_once(tmp_path, monkeypatch):
    """`dice sample` and `dice eval` parse each spelling once and pass the method on (same methods, same
    notices about ignored flags)."""
    import dicecfg.evaluation.evaluate as evaluate
    import dicecfg.sampling.job as job
    import dicecfg.sampling.spelling as spelling
    from dicecfg.evaluation.evaluate import EvalJob, eval_inputs
    from dicecfg.sampling.job import SampleJob, sample_inputs

    parsed = []

    def counting(text):
        parsed.append(text)
        return parse_method(text)

    for module in (spelling, job, evaluate):
        monkeypatch.setattr(module, "parse_method", counting)
    inputs = sample_inputs(SampleJob(prompts=("a red circle",), method="cfg:w=3", guidance_scale=7.0))
    assert parsed == ["cfg:w=3"] and inputs.method == CFG(3.0) and inputs.ignored == ["--guidance-scale"]
    parsed.clear()
    inputs = eval_inputs(EvalJob(methods=("cfg", "scaling:s=1.5"), limit=2, out=str(tmp_path / "e")))
    assert parsed == ["cfg", "scaling:s=1.5"]
    assert [r.method for r in inputs.rows] == [CFG(5.0), Scaling(1.5)]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_cfg_on_the_whole_interval_is_todays_cfg(tiny_sd):
    stock, nfe = images(tiny_sd, "cfg")
    assert nfe == [20, 20]
    for same in (CFG(), CFG(5.0, 0.0, 1.0), "cfg:start=0,stop=1"):
        assert np.array_equal(images(tiny_sd, same)[0], stock)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_cfg_interval_equals_the_diffusers_cutoff_recipe_on_the_mini_model():
    """CFG(stop=0.1) at 20 steps: CFG on steps 0 and 1, then the prompt alone, as diffusers' SDCFGCutoffCallback
    with cutoff_step_index=1 makes it (it switches after the step it is called at), at 22 NFE."""
    from diffusers.callbacks import SDCFGCutoffCallback

    pipe = load_pipeline()
    prompt, seed = "a small red circle to the left of a blue square", 11
    (s,) = generate(pipe, [prompt], method=CFG(stop=0.1), seeds=[seed], progress=False)
    assert s.nfe == 22
    ref = pipe(prompt, guidance_scale=5.0, num_inference_steps=20, output_type="np",
               generator=torch.Generator().manual_seed(seed),
               callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)).images[0]  # fmt: skip
    assert np.array_equal(s.image, (np.clip(ref, 0, 1) * 255).round().astype(np.uint8))
    full = next(generate(pipe, [prompt], method="cfg", seeds=[seed], progress=False)).image
    assert not np.array_equal(s.image, full)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_cfg_interval_equals_the_sdxl_cutoff_recipe(pipes):
    from diffusers.callbacks import SDXLCFGCutoffCallback

    pipe = pipes["sdxl"]
    fam = family_of(pipe)
    (s,) = generate(
        pipe, ["a red circle"], method=CFG(stop=0.2), seeds=[5], num_inference_steps=10, progress=False
    )
    assert s.nfe == 12
    embeds = fam.pipeline_kwargs(
        pipe, fam.encode(pipe, ["a red circle"]), fam.encode(pipe, [""])
    )  # c_neg: ""
    ref = pipe(**embeds, guidance_scale=5.0, num_inference_steps=10, output_type="np",
               generator=torch.Generator().manual_seed(5),
               callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)).images[0]  # fmt: skip
    assert np.array_equal(s.image, (np.clip(ref, 0, 1) * 255).round().astype(np.uint8))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_dice_interval_equals_switching_embeddings_after_two_steps(family, pipes):
    """Dice(stop=0.2) at 10 steps: the sharpened embedding on steps 0 and 1, the plain one after, as a step-end
    callback that swaps prompt_embeds makes it."""
    from dicecfg import sharpen

    pipe = pipes[family]
    sharp = random_sharpener(pipe, std=0.1)
    (s,) = generate(pipe, ["a red circle"], method=Dice(sharp, stop=0.2), seeds=[9], num_inference_steps=10,
                    progress=False)  # fmt: skip
    kwargs = sharpen(pipe, sharp, ["a red circle"])
    plain = family_of(pipe).encode(pipe, ["a red circle"]).embeds

    def switch(p, i, t, kw):
        return {"prompt_embeds": plain} if i == 1 else {}

    ref = pipe(**kwargs, guidance_scale=1.0, num_inference_steps=10, output_type="np",
               generator=torch.Generator().manual_seed(9), callback_on_step_end=switch,
               callback_on_step_end_tensor_inputs=["prompt_embeds"]).images[0]  # fmt: skip
    assert np.array_equal(s.image, (np.clip(ref, 0, 1) * 255).round().astype(np.uint8))
    full = next(generate(pipe, ["a red circle"], method=Dice(sharp), seeds=[9], num_inference_steps=10,
                         progress=False)).image  # fmt: skip
    assert not np.array_equal(s.image, full)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart"])
def test_nfe_is_the_rows_that_ran(family, pipes):
    """For every method, each image's NFE equals the rows of the denoiser's first layer, counted by a hook."""
    pipe = pipes[family]
    sharp = random_sharpener(pipe, std=0.1)
    rows = []
    hook = first_layer(pipe).register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    methods = [Unguided(), CFG(), CFG(stop=0.3), CFG(start=0.5), Scaling(), Dice(sharp), Dice(sharp, stop=0.3),
               AdaptiveGuidance(threshold=0.5), AdaptiveGuidance(threshold=1.0)]  # fmt: skip
    try:
        for m in methods:
            rows.clear()
            _, nfe = images(pipe, m)
            assert sum(rows) == sum(nfe), m.label
            if not isinstance(m, AdaptiveGuidance):
                assert nfe == [m.nfe(10)] * 2, m.label
    finally:
        hook.remove()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("family", ["sd", "pixart"])
def test_intervals_change_only_what_they_should(family, pipes):
    pipe = pipes[family]
    sharp = random_sharpener(pipe, std=0.1)
    unguided, _ = images(pipe, "unguided")
    assert np.array_equal(images(pipe, CFG(1.0, stop=0.5))[0], unguided)  # w=1: conditional sampling
    assert np.array_equal(images(pipe, Dice(sharp, alpha=0.0, stop=0.5))[0], unguided)
    assert np.array_equal(images(pipe, Dice(sharp, stop=1.0))[0], images(pipe, Dice(sharp))[0])
    assert not np.array_equal(images(pipe, Dice(sharp, stop=0.3))[0], unguided)
    assert not np.array_equal(images(pipe, CFG(stop=0.3))[0], unguided)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_adaptive_guidance_stops_per_image(tiny_sd):
    cfg, _ = images(tiny_sd, "cfg")
    never, nfe = images(
        tiny_sd, AdaptiveGuidance(threshold=1.0)
    )  # the cosine never exceeds 1: CFG throughout
    assert np.array_equal(never, cfg) and nfe == [20, 20]
    _, nfe = images(
        tiny_sd, AdaptiveGuidance(threshold=1e-6)
    )  # agrees at once: guided on the first step only
    assert nfe == [11, 11]


def test_implied_x0_cosine():
    x = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8)
    same = implied_x0_cosine(x, eps, eps, 0.3, "epsilon")
    assert torch.allclose(same, torch.ones(2))
    other = implied_x0_cosine(x, eps, -eps, 0.3, "epsilon")
    assert (other < 0.999).all()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_second_order_scheduler_intervals(tiny_sd):
    """Heun evaluates each noise level twice: both evaluations belong to that level's step, and NFE counts them."""
    from diffusers import HeunDiscreteScheduler

    tiny_sd.scheduler = HeunDiscreteScheduler.from_config(tiny_sd.scheduler.config)
    rows = []
    hook = tiny_sd.unet.conv_in.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    try:
        _, nfe = images(tiny_sd, CFG(stop=0.5), prompts=P[:1], seeds=[1], steps=6)
    finally:
        hook.remove()
    # 6 noise levels, 11 evaluations: levels 0-2 guided (1 + 2 + 2 evaluations, two rows each), the rest one row
    assert rows == [2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1] and nfe == [16]
    assert np.array_equal(images(tiny_sd, CFG(), steps=6)[0], images(tiny_sd, "cfg", steps=6)[0])


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_fast_graphs_plumbing_with_intervals(monkeypatch, tiny_sd):
    from dicecfg.sampling import fast as fastmod

    monkeypatch.setattr(fastmod, "unsupported", lambda module, device: None)
    monkeypatch.setattr(fastmod, "cuda_capture", fastmod.eager_capture)
    sharp = random_sharpener(tiny_sd, std=0.1)
    for m in (CFG(stop=0.3), Dice(sharp, stop=0.3), AdaptiveGuidance(threshold=0.5)):
        eager, nfe = images(tiny_sd, m)
        fast, fast_nfe = images(tiny_sd, m, fast=True)
        assert np.array_equal(fast, eager) and fast_nfe == nfe, m.label
    assert "forward" not in tiny_sd.unet.__dict__


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_time_block_sharpener_edits_per_block_and_saves(tiny_sd, tmp_path):
    """A sharpener with time_edges makes one edit per block of timesteps, once per image: DICE equals switching
    the embedding to each block's edit at its steps. Saved and loaded, it keeps its edges."""
    from dicecfg.sampling.methods import sharpen_cond

    fam = family_of(tiny_sd)
    sharp = random_sharpener(tiny_sd, std=0.1)
    timed = Sharpener(sharp.dim, 64, 4, family="sd", num_tokens=77, time_edges=[700, 400])
    timed.load_state_dict(sharp.state_dict(), strict=False)
    assert torch.count_nonzero(timed.time_embed) == 0
    assert np.array_equal(images(tiny_sd, Dice(timed))[0], images(tiny_sd, Dice(sharp))[0])  # zero: static
    torch.nn.init.normal_(timed.time_embed, std=1.0)
    got, _ = images(tiny_sd, Dice(timed), prompts=P[:1], seeds=[2])
    cond, neg = fam.encode(tiny_sd, P[:1]), fam.encode(tiny_sd, [""])
    edits = [
        sharpen_cond(fam, timed, cond, neg, 1.0, t=torch.tensor([t])).embeds for t in (850.0, 550.0, 200.0)
    ]
    assert not torch.equal(edits[0], edits[1])
    tiny_sd.scheduler.set_timesteps(10)
    blocks = [sum(float(t) < e for e in (700, 400)) for t in tiny_sd.scheduler.timesteps]

    def switch(p, i, t, kw):
        return {"prompt_embeds": edits[blocks[i + 1]]} if i + 1 < len(blocks) else {}

    ref = tiny_sd(prompt_embeds=edits[blocks[0]], guidance_scale=1.0, num_inference_steps=10, output_type="np",
                  generator=torch.Generator().manual_seed(2), callback_on_step_end=switch,
                  callback_on_step_end_tensor_inputs=["prompt_embeds"]).images  # fmt: skip
    assert np.array_equal(got, (np.clip(ref, 0, 1) * 255).round().astype(np.uint8))
    timed.save_pretrained(tmp_path / "s")
    back = Sharpener.from_pretrained(tmp_path / "s")
    assert back.config["time_edges"] == [700.0, 400.0] and torch.equal(back.time_embed, timed.time_embed)
    with pytest.raises(ValueError, match="descending"):
        Sharpener(8, 8, 1, time_edges=[400, 700])


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_recorded_settings_travel_with_the_sharpener(tiny_sd, tmp_path):
    sharp = random_sharpener(tiny_sd, std=0.1)
    assert (Dice(sharp).alpha, Dice(sharp).start, Dice(sharp).stop) == (1.0, 0.0, 1.0)  # none: as before
    sharp.config["sampling"] = {"alpha": 1.5, "start": 0.0, "stop": 0.3}
    sharp.save_pretrained(tmp_path / "s")
    loaded = Sharpener.from_pretrained(tmp_path / "s")
    d = Dice(loaded)
    assert (d.alpha, d.start, d.stop) == (1.5, 0.0, 0.3)
    assert Dice(loaded, alpha=1.0).stop == 0.3  # told otherwise: alpha only
    assert np.array_equal(
        images(tiny_sd, "dice", sharpener=loaded)[0], images(tiny_sd, Dice(sharp, 1.5, 0.0, 0.3))[0]
    )
    (s,) = generate(tiny_sd, P[:1], sharpener=loaded, num_inference_steps=4, progress=False)
    assert s.params == {"alpha": 1.5, "start": 0.0, "stop": 0.3}
    loaded.config["sampling"] = {"alpha": 1.0, "start": 0.5, "stop": 0.2}
    with pytest.raises(InputError, match="below stop"):
        Dice(loaded)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_dice_tune_records_the_best_settings(tiny_sd_dir, tmp_path, capsys):
    from dicecfg import cli

    sharp = random_sharpener(load_pipeline(tiny_sd_dir), std=0.1)
    sharp.save_pretrained(tmp_path / "s")
    (tmp_path / "p.txt").write_text(
        "a photo of a red car\na blue bird at night\ntwo green cats\n"
    )  # no oracle
    args = ["-q", "tune", "--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "s"), "--prompts",
            str(tmp_path / "p.txt"), "--steps", "4", "--alphas", "0.5", "1", "--stops", "0.5", "1", "--seed-sets", "1",
            "--out", str(tmp_path / "t")]  # fmt: skip
    assert cli.main([*args, "--no-write"]) == 0
    assert "sampling" not in json.loads((tmp_path / "s" / "config.json").read_text())
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert (
        result["score"] == "PSNR vs CFG (dB)" and len(result["rows"]) == 5
    )  # 4 candidates and CFG's first steps
    recorded = json.loads((tmp_path / "s" / "config.json").read_text())["sampling"]
    assert recorded == result["best"] and recorded["alpha"] in (0.5, 1.0) and recorded["stop"] in (0.5, 1.0)
    best = max((r for r in result["rows"] if r["method"] == "dice"), key=lambda r: r["score"])
    assert (
        result["rows"][[r["row"] for r in result["rows"]].index(result["best_row"])]["score"]
        >= best["score"] - best["stderr"]
    )
    assert "(chosen)" in out and "recorded in" in out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tune.md").write_text("my notes\n")
    assert cli.main([*args[:-1], str(tmp_path / "mine")]) == 2  # a file of the user's is never replaced
    assert "not written by `dice tune`" in capsys.readouterr().err
    assert (tmp_path / "mine" / "tune.md").read_text() == "my notes\n"
    assert cli.main(["-q", "tune", "--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "s")]) == 2
    assert "needs --prompts" in capsys.readouterr().err


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_dice_tune_on_the_mini_model_scores_with_the_oracle(tmp_path):
    from dicecfg.evaluation.tune import TuneJob, tune, validation_prompts

    pipe = load_pipeline()
    sharp = Sharpener.from_pretrained("mini")
    ps = validation_prompts(TuneJob(limit=3))
    result = tune(pipe, sharp, ps, alphas=(1.0,), stops=(0.25, 1.0), seed_sets=1, steps=4, progress=False)
    assert result["score"] == "oracle all-correct"
    assert {r["row"] for r in result["rows"]} >= {"cfg", "cfg-first"}
    assert all(0.0 <= r["score"] <= 1.0 and "fd" in r for r in result["rows"])
    assert result["best"]["stop"] in (0.25, 1.0)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_negative_prompts_have_settings_of_their_own(tiny_sd):
    """Images with a negative prompt follow neg_* (here: the edit on every step), the others the interval; in
    one batch each row follows its own."""
    sharp = random_sharpener(tiny_sd)
    d = Dice(sharp, alpha=1.0, stop=0.3, neg_alpha=1.0, neg_stop=1.0)
    mixed, _ = images(tiny_sd, d, negative_prompt=["", "a green square"])
    plain, _ = images(tiny_sd, Dice(sharp, 1.0, 0.0, 0.3), prompts=P[:1], seeds=[3])
    full_neg, _ = images(
        tiny_sd, Dice(sharp, 1.0, 0.0, 1.0), prompts=P[1:], seeds=[4], negative_prompt="a green square"
    )
    short_neg, _ = images(
        tiny_sd, Dice(sharp, 1.0, 0.0, 0.3), prompts=P[1:], seeds=[4], negative_prompt="a green square"
    )
    assert np.abs(mixed[0].astype(int) - plain[0]).max() <= 1
    assert np.abs(mixed[1].astype(int) - full_neg[0]).max() <= 1
    assert (
        np.abs(mixed[1].astype(int) - short_neg[0]).mean()
        > 4 * np.abs(mixed[1].astype(int) - full_neg[0]).mean()
    )
    sharp.config["sampling"] = {
        "alpha": 1.5,
        "start": 0.0,
        "stop": 0.3,
        "negative": {"alpha": 1.0, "start": 0.0, "stop": 1.0},
    }
    rec = Dice(sharp)
    assert rec.settings == (1.5, 0.0, 0.3) and rec.neg_settings == (1.0, 0.0, 1.0)
    assert "negative prompts: alpha=1" in rec.setting and rec.spec.endswith("neg_stop=1")
    assert parse_method(rec.spec)[1]["neg_stop"] == 1.0


def count_rows(pipe):
    """Rows of every denoiser call from now on (the hook sees the rows that really ran), and its remover."""
    rows = []
    hook = pipe.unet.conv_in.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    return rows, hook


@pytest.mark.parametrize("strength, rows", [(0.5, [2, 2, 1, 1, 1]), (0.3, [2, 1, 1])])
def test_intervals_count_the_steps_an_img2img_strength_runs(tiny_sd, strength, rows):
    """At strength s an img2img call runs int(10 s) of 10 steps; CFG(stop=0.4) guides the first 40% of *those*
    (diffusers' guider rule on the steps run), and at 0.5 it is exactly diffusers' cutoff callback there."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.callbacks import SDCFGCutoffCallback

    from dicecfg.sampling.generate import generators, sample_batch

    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd.components)
    fam = family_of(tiny_sd)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cond, neg = fam.encode(pipe, P[:1]), fam.encode(pipe, [""])
    ran, hook = count_rows(pipe)
    try:
        got, nfe = sample_batch(pipe, fam, CFG(stop=0.4), cond, neg, generators(torch.device("cpu"), [7]),
                                num_inference_steps=10, image=image, strength=strength)  # fmt: skip
    finally:
        hook.remove()
    assert ran == rows and list(nfe) == [sum(rows)] == [CFG(stop=0.4).nfe(len(rows))]
    ref = pipe(P[0], image=image, strength=strength, guidance_scale=5.0, num_inference_steps=10, output_type="np",
               generator=torch.Generator().manual_seed(7),
               callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=rows.count(2) - 1),
               ).images  # fmt: skip
    assert np.array_equal(got, ref)


def test_repeated_timesteps_are_steps_of_their_own(tiny_sd):
    """DPM-Solver++ with Karras sigmas repeats timesteps at 50 steps: each call is its own step, so an interval
    counts 50 steps and the NFE that runs is the NFE planned, for CFG and DICE."""
    from diffusers import DPMSolverMultistepScheduler

    tiny_sd.scheduler = DPMSolverMultistepScheduler.from_config(
        tiny_sd.scheduler.config, use_karras_sigmas=True
    )
    tiny_sd.scheduler.set_timesteps(50)
    ts = tiny_sd.scheduler.timesteps.tolist()
    assert len(set(ts)) < len(ts) == 50  # the case: some timestep is repeated
    sharp = random_sharpener(tiny_sd, std=0.1)
    ran, hook = count_rows(tiny_sd)
    try:
        _, nfe = images(tiny_sd, CFG(stop=0.5), prompts=P[:1], seeds=[1], steps=50)
        assert ran == [2] * 25 + [1] * 25 and nfe == [CFG(stop=0.5).nfe(50)] == [75]
        ran.clear()
        _, nfe = images(tiny_sd, Dice(sharp, stop=0.5), prompts=P[:1], seeds=[1], steps=50)
        assert ran == [1] * 50 and nfe == [Dice(sharp, stop=0.5).nfe(50)]
    finally:
        hook.remove()


def recording(pipe, sampling):
    sharp = random_sharpener(pipe, std=0.1)
    sharp.config["sampling"] = sampling
    return sharp


@pytest.mark.parametrize(
    "sampling, names",
    [
        ("abc", ['"sampling" must be an object']),
        ([1, 2], ['"sampling" must be an object']),
        ({"alpha": "abc"}, ['"sampling".alpha must be a finite number', "'abc'"]),
        ({"alpha": None}, ['"sampling".alpha must be a finite number']),
        ({"alpha": float("inf")}, ['"sampling".alpha must be a finite number']),  # 1e400 in the file
        ({"alpha": True}, ['"sampling".alpha']),
        ({"stop": 2}, ['"sampling" records the interval [0, 2)']),
        ({"start": 0.5, "stop": 0.2}, ['"sampling" records the interval [0.5, 0.2)']),
    ],
)
def test_malformed_recorded_settings_name_config_json_and_the_key(tiny_sd, sampling, names):
    with pytest.raises(InputError) as e:
        Dice(recording(tiny_sd, sampling))
    text = str(e.value)
    assert text.startswith("config.json: ") and "\n" not in text and all(n in text for n in names), text


def test_a_bad_negative_entry_blocks_only_images_with_a_negative_prompt(tiny_sd, tmp_path):
    from dicecfg.sampling.methods import check_recorded

    sharp = recording(tiny_sd, {"alpha": 1.5, "stop": 0.5, "negative": "x"})
    d = Dice(sharp)
    assert d.settings == (1.5, 0.0, 0.5)
    _, nfe = images(tiny_sd, d, steps=4)  # no negative prompt: samples
    assert nfe == [4, 4]
    for bad in (
        lambda: images(tiny_sd, d, steps=4, negative_prompt="a blue square"),
        lambda: check_recorded(sharp),
    ):
        with pytest.raises(InputError, match='"sampling"."negative" must be an object'):
            bad()
    (tmp_path / "s").mkdir()  # a value beyond float range in the file itself loads, and is named when read
    sharp.save_pretrained(tmp_path / "s")
    config = (
        (tmp_path / "s" / "config.json")
        .read_text()
        .replace('"negative": "x"', '"negative": {"alpha": 1e400}')
    )
    (tmp_path / "s" / "config.json").write_text(config)
    with pytest.raises(InputError, match=r'"sampling"."negative".alpha must be a finite number \(got inf\)'):
        check_recorded(Sharpener.from_pretrained(tmp_path / "s"))


def test_given_settings_win_over_every_recorded_one(tiny_sd):
    """A start given takes the interval whole (the recorded stop is not mixed in); an alpha given acts on images
    with a negative prompt too, and their records say so."""
    sharp = recording(tiny_sd, {"alpha": 1.5, "stop": 0.15, "negative": {"alpha": 1.0, "stop": 1.0}})
    assert Dice(sharp, start=0.5).settings == (1.5, 0.5, 1.0)
    assert Dice(sharp, start=0.5).neg_settings == (1.0, 0.5, 1.0)
    d = Dice(sharp, alpha=2.0)
    assert d.settings == (2.0, 0.0, 0.15) and d.neg_settings == (2.0, 0.0, 1.0)
    assert Dice(sharp).neg_settings == (1.0, 0.0, 1.0)  # told nothing: every recorded setting
    (s,) = generate(tiny_sd, P[:1], method=d, negative_prompt="a blue square", num_inference_steps=2,
                    progress=False)  # fmt: skip
    assert s.params["neg_alpha"] == 2.0
    with pytest.raises(InputError, match=r"start \(0.5\) must be below stop \(0.2\)"):
        Dice(sharp, start=0.5, stop=0.2)  # both given: the advice fits what was given


def test_dice_equality_includes_the_sharpener(tiny_sd):
    a, b = random_sharpener(tiny_sd, seed=1), random_sharpener(tiny_sd, seed=2)
    assert Dice(a) == Dice(a) and hash(Dice(a)) == hash(Dice(a))
    assert Dice(a) != Dice(b) and len({Dice(a), Dice(b)}) == 2 and len({Dice(a): 1, Dice(b): 2}) == 2


def test_numpy_numbers_repeated_keys_and_printed_values():
    assert CFG(np.float32(7.0), stop=np.float64(0.5)) == CFG(7.0, stop=0.5)
    assert Scaling(np.int64(2)).scale == 2.0
    with pytest.raises(InputError, match="w is given twice"):
        parse_method("cfg:w=5,w=9")
    with pytest.raises(InputError, match=r"guidance_scale=0.9999999 is below 1"):
        CFG(0.9999999)
    assert CFG(5.0000001).label == "cfg w=5.0000001"


def test_an_interval_with_no_guided_step_runs_and_is_recorded_as_what_acts(tiny_sd, caplog):
    import logging

    sharp = recording(tiny_sd, {"alpha": 1.5, "stop": 0.15})
    for method, steps in ((CFG(stop=0.1), 9), (Dice(sharp), 6)):
        with caplog.at_level(logging.WARNING, logger="dicecfg"):
            caplog.clear()
            (s,) = generate(
                tiny_sd, P[:1], method=method, seeds=[2], num_inference_steps=steps, progress=False
            )
        (warning,) = [r.getMessage() for r in caplog.records if "no guided step" in r.getMessage()]
        assert f"at {steps} steps" in warning and "as unguided" in warning
        assert s.method == "unguided" and s.params == {} and s.nfe == steps
        (plain,) = generate(
            tiny_sd, P[:1], method="unguided", seeds=[2], num_inference_steps=steps, progress=False
        )
        assert np.array_equal(s.image, plain.image)
    assert CFG(stop=0.1).acting(10) == CFG(stop=0.1)  # one guided step at 10: as asked
