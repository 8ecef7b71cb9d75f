"""`dice ceiling --edits blocks:K | steps --interval START,STOP`: edits that change with the step, where they act
and where they are trained, sampled through the one sampling path; the static ceiling as it was; resume and the
refusal of another layout; bad spellings (docs/recipes.md, "dice ceiling")."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import TINY_CEILING, interrupt_ceiling, one_line_error
from safetensors.torch import load_file, save_file

from dicecfg.cli import main
from dicecfg.errors import InputError
from dicecfg.evaluation.report import ceiling_comparison, ceiling_table
from dicecfg.families import family_of
from dicecfg.sampling.generate import generators, sample_batch
from dicecfg.sampling.methods import Unguided
from dicecfg.training import ceiling as ceiling_module
from dicecfg.training.ceiling import CeilingConfig
from dicecfg.training.ceiling_job import ceiling
from dicecfg.training.ceiling_layout import StepEdits, edit_layout, step_timesteps, step_windows

CFG = TINY_CEILING


def _mini_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    from dicecfg.assets import shipped_model_dir

    return DPMSolverMultistepScheduler.from_pretrained(shipped_model_dir("mini"), subfolder="scheduler")


def test_each_training_timestep_belongs_to_the_step_whose_timestep_is_nearest():
    """The windows of the shipped model's 20 DPM-Solver++ steps: every training timestep is owned by the step
    whose sampling timestep is nearest (a tie by the later step), the first step up to 999, the last down to 0."""
    times = step_timesteps(_mini_scheduler(), 20)
    assert len(times) == 20 and times == sorted(times, reverse=True)
    windows = step_windows(times, 1000)
    assert windows[0][1] == 1000 and windows[-1][0] == 0
    owner = {t: i for i, (lo, hi) in enumerate(windows) for t in range(lo, hi)}
    assert sorted(owner) == list(range(1000))  # each timestep exactly once
    for t in range(1000):
        dist = [abs(t - s) for s in times]
        nearest = max(i for i, d in enumerate(dist) if d == min(dist))  # a tie: the later step
        assert owner[t] == nearest, t
    assert step_windows([10, 6], 20) == [(9, 20), (0, 9)]  # 8 is as near to 10 as to 6: the later step's


def test_layouts_of_the_edits_and_the_interval():
    sched, n = _mini_scheduler(), 20
    per_step = step_windows(step_timesteps(sched, n), 1000)
    static = edit_layout("static", "0,1", sched, n, 1000)
    assert static.whole and static.count == 1 and static.tensors() == {}  # the first version's files
    blocks = edit_layout("blocks:4", "0,1", sched, n, 1000)
    assert blocks.spans == ((0, 5), (5, 10), (10, 15), (15, 20)) and blocks.covers_all and not blocks.whole
    assert blocks.windows == tuple((per_step[b - 1][0], per_step[a][1]) for a, b in blocks.spans)
    assert edit_layout("blocks:3", "0,1", sched, n, 1000).spans == ((0, 7), (7, 14), (14, 20))
    steps = edit_layout("steps", "0,1", sched, n, 1000)
    assert steps.count == 20 and steps.windows == tuple(per_step) and steps.step_edit() == tuple(range(20))
    first = edit_layout("steps", "0,0.25", sched, n, 1000)  # the first 5 of 20 steps, one edit each
    assert first.spans == tuple((i, i + 1) for i in range(5)) and first.window == (per_step[4][0], 1000)
    assert first.step_edit() == (0, 1, 2, 3, 4) + (-1,) * 15
    slots = first.slots()
    assert (slots[per_step[4][0] :] < 5).all() and (slots[: per_step[4][0]] == 5).all()  # 5: the plain prompt
    band = edit_layout("static", "0.15,0.9", sched, n, 1000)  # steps 3-17: int(0.15*20) <= i < int(0.9*20)
    assert (
        band.spans == ((3, 18),) and band.window == (per_step[17][0], per_step[3][1]) and not band.covers_all
    )


@pytest.mark.parametrize(
    "setting, words",
    [
        ({"edits": "block:4"}, ("--edits (edits): 'block:4' is not an edit layout", "blocks:K", "steps")),
        ({"edits": "blocks:0"}, ("'blocks:0' is not an edit layout", "e.g. --edits blocks:4")),
        ({"edits": "blocks:x"}, ("is not an edit layout",)),
        ({"edits": "blocks:30"}, ("asks for 30 blocks of the 20 steps", "at most blocks:20")),
        ({"edits": "blocks:4", "interval": "0,0.1"}, ("4 blocks of the 2 steps", "at most blocks:2")),
        (
            {"interval": "0.25"},
            ("--interval (interval): '0.25' is not an interval", "e.g. --interval 0,0.25"),
        ),
        ({"interval": "a,b"}, ("is not an interval", "START,STOP")),
        ({"interval": "0.5,0.25"}, ("not inside [0, 1] with START below STOP",)),
        ({"interval": "0,2"}, ("not inside [0, 1]",)),
        ({"interval": "nan,1"}, ("not inside [0, 1]",)),
        ({"interval": "0,0.01"}, ("holds no step of 20", "widen it, e.g. --interval 0,0.05")),
        ({"cfg_intervals": ("0,0.1", "0.1")}, ("--cfg-intervals (cfg_intervals): '0.1' is not an interval",)),
        ({"cfg_intervals": "0,0.1"}, ("a list of START,STOP intervals",)),
    ],
)
def test_bad_edits_and_intervals_are_refused_naming_the_fix(setting, words):
    with pytest.raises(InputError) as e:
        CeilingConfig(**setting)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_settings_are_recorded_in_one_spelling():
    cfg = CeilingConfig(edits="blocks:04", interval="0.0,0.250", cfg_intervals=("0,.1", "0,0.1", "0.15,0.9"))
    assert (cfg.edits, cfg.interval, cfg.cfg_intervals) == ("blocks:4", "0,0.25", ("0,0.1", "0.15,0.9"))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--edits", "block:4"], ("--edits (edits)", "blocks:K")),
        (["--edits", "steps", "--interval", "0;0.25"], ("--interval (interval)", "e.g. --interval 0,0.25")),
        (["--interval", "0,0.01"], ("holds no step of 20", "widen it")),
        (["--cfg-intervals", "0,0.1", "1,0"], ("--cfg-intervals (cfg_intervals): '1,0'",)),
    ],
)
def test_bad_spellings_on_the_command_line_are_one_line_before_any_work(flags, words, tmp_path, capsys):
    out = tmp_path / "c"
    one_line_error(capsys, main(["-q", "ceiling", *flags, "--out", str(out)]), *words)
    assert not out.exists()


def _batch(pipe, layout_spec, interval="0,1", steps=4, draws=3, prompts=("a red circle", "a blue square")):
    from dicecfg.training.objective import autocast_for

    cfg = CeilingConfig(**{**CFG, "num_inference_steps": steps, "edits": layout_spec, "interval": interval,
                           "draws": draws})  # fmt: skip
    fam = family_of(pipe)
    layout = edit_layout(cfg.edits, cfg.interval, pipe.scheduler, steps, 1000)
    autocast = autocast_for(pipe._execution_device, "no")
    batch = ceiling_module._Batch(pipe, fam, list(prompts), fam.encode(pipe, [""]), cfg, 0, autocast, layout)
    return batch, layout


def _draws(batch, t):
    """Draws of the batch's pool at the timesteps ``t`` (p, n), fixed noise."""
    g = torch.Generator().manual_seed(0)
    return torch.zeros_like(t), t, torch.randn((t.numel(), *batch.pool.shape[2:]), generator=g)


def test_each_edit_receives_gradient_only_from_draws_in_its_block(tiny_sd):
    batch, layout = _batch(tiny_sd, "blocks:2")  # 4 steps (999, 749, 500, 250): timesteps 625-999, 0-624
    assert layout.windows == ((625, 1000), (0, 625))
    c = batch.cond.embeds.float()
    delta = torch.zeros((2, 2, *c.shape[1:]), requires_grad=True)
    tokens = ceiling_module._edited(c, delta, layout)
    assert tokens.shape == (
        2,
        2,
        *c.shape[1:],
    )  # the edits cover every timestep: no slot for the plain prompt
    t = torch.tensor([[700, 999, 625], [700, 624, 0]])  # prompt 0: block 0 only; prompt 1: both blocks
    batch.loss(tokens, *_draws(batch, t), batch.pool).sum().backward()
    moved = delta.grad.abs().flatten(2).sum(-1)
    assert moved[0, 0] > 0 and moved[0, 1] == 0 and moved[1, 0] > 0 and moved[1, 1] > 0, moved
    for step in range(2):  # the training draws: each edit moves exactly where some draw of its prompt fell
        delta.grad = None
        pick, t, noise = batch.train_draw(step)
        batch.loss(ceiling_module._edited(c, delta, layout), pick, t, noise, batch.pool).sum().backward()
        hit = torch.stack([(batch.slots[t] == k).any(1) for k in range(2)], 1)
        assert torch.equal(delta.grad.abs().flatten(2).sum(-1) > 0, hit), (t, hit)


def test_edits_on_an_interval_train_there_and_leave_other_timesteps_to_the_plain_prompt(tiny_sd):
    batch, layout = _batch(tiny_sd, "static", interval="0,0.5")  # steps 0-1 of 4: timesteps 625-999
    assert layout.window == (625, 1000) and layout.count == 1
    drawn = torch.cat([batch.train_draw(s)[1].flatten() for s in range(20)])
    assert drawn.min() >= 625 and drawn.max() <= 999 and len(drawn.unique()) > 20
    c = batch.cond.embeds.float()
    tokens = ceiling_module._edited(c, 5 * torch.randn((2, 1, *c.shape[1:])), layout)
    assert tokens.shape[1] == 2 and torch.equal(tokens[:, 1], c)  # slot 1: the plain prompt
    with torch.no_grad():
        outside = _draws(batch, torch.tensor([[0, 300, 624], [1, 100, 500]]))
        assert torch.equal(batch.loss(tokens, *outside, batch.pool), batch.loss(c, *outside, batch.pool))
        inside = _draws(batch, torch.tensor([[625, 800, 999], [700, 650, 900]]))
        assert not torch.equal(batch.loss(tokens, *inside, batch.pool), batch.loss(c, *inside, batch.pool))


def test_per_step_edits_run_through_the_sampler_and_leave_other_steps_byte_identical(tiny_sd):
    """StepEdits through sample_batch: each step's denoiser call gets its edit, steps without one get the very
    embedding the plain prompt gives; edits on no step give unguided sampling exactly."""
    fam = family_of(tiny_sd)
    cond, neg = fam.encode(tiny_sd, ["a red circle", "a blue square"]), fam.encode(tiny_sd, [""])
    edits = cond.embeds.unsqueeze(1) + 3 * torch.randn(
        (2, 2, *cond.embeds.shape[1:]), generator=torch.Generator().manual_seed(1)
    )
    seen, forward = [], tiny_sd.unet.forward

    def record(*args, **kwargs):
        seen.append(kwargs["encoder_hidden_states"].clone())
        return forward(*args, **kwargs)

    tiny_sd.unet.forward = record

    def run(method):
        seen.clear()
        out, nfe = sample_batch(tiny_sd, fam, method, cond, neg.expand(2), generators(torch.device("cpu"), [3, 4]),
                                num_inference_steps=4, output_type="latent")  # fmt: skip
        assert nfe.tolist() == [4, 4]  # one pass per step
        return out, list(seen)

    plain, plain_seen = run(Unguided())
    edited, edited_seen = run(StepEdits(edits, (-1, 0, 1, -1)))
    assert all(torch.equal(edited_seen[i], plain_seen[i]) for i in (0, 3))
    assert torch.equal(edited_seen[1], edits[:, 0]) and torch.equal(edited_seen[2], edits[:, 1])
    assert not torch.equal(edited, plain)
    nowhere, nowhere_seen = run(StepEdits(edits, (-1, -1, -1, -1)))
    assert torch.equal(nowhere, plain) and all(
        torch.equal(a, b) for a, b in zip(nowhere_seen, plain_seen, strict=True)
    )


def test_the_report_names_the_best_cfg_row_at_the_optimums_cost():
    row = lambda name, nfe, all_: {"row": name, "nfe": nfe, "eval_loss": None, "all": all_}  # noqa: E731
    rows = [row("unguided", 20, 0.88), row("cfg", 40, 0.98), row("cfg-first", 22, 0.96),
            row("cfg [0,0.05)", 21, 0.93), row("cfg [0,0.15)", 23, 0.97), row("cfg [0,0.25)", 25, 0.97),
            row("cfg [0.15,0.9)", 35, 0.99), row("optimum", 20, 0.95)]  # fmt: skip
    c = ceiling_comparison(rows)
    assert c["same_nfe"] == {"limit": 20, "row": None} and c["optimum_nfe"] == 20
    assert c["cheap_nfe"] == {"limit": 25, "row": "cfg [0,0.15)", "nfe": 23, "all": 0.97}  # a tie: fewer NFE
    text = ceiling_table(rows)
    assert "Best CFG row at <= 20 NFE (the optimum's NFE or less): none" in text
    assert (
        "Best CFG row at <= 25 NFE (at most 25% more NFE): cfg [0,0.15) (23 NFE), all-correct 0.970" in text
    )
    assert "0.950, -0.020 against it" in text
    rows[3]["nfe"] = 20  # an interval that holds no step at these steps: 20 NFE
    assert ceiling_comparison(rows)["same_nfe"]["row"] == "cfg [0,0.05)"
    unscored = [{k: v for k, v in r.items() if k != "all"} for r in rows]
    assert ceiling_comparison(unscored)["cheap_nfe"]["row"] is None
    assert "not ranked" in ceiling_table(unscored)


# the first version's numbers for this run of the tiny pipeline (commit 9bd6b33, torch 2.13 on a 2-core CPU;
# 1 or 2 threads move them by 3e-5 at most)
FIRST_VERSION = {"unguided": 5.18736, "optimum": 2.63858, "delta_abs_sum": 1365.29}


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_the_static_ceiling_is_the_first_versions_and_its_old_folders_resume(tiny_sd, prompts, tmp_path):
    three = prompts[:3]
    default = ceiling(tiny_sd, three, output_dir=tmp_path / "d", config=CeilingConfig(**CFG))
    static = ceiling(tiny_sd, three, output_dir=tmp_path / "s",
                     config=CeilingConfig(**CFG, edits="static", interval="0,1"))  # fmt: skip
    assert static.rows == default.rows
    losses = {r["row"]: r["eval_loss"] for r in default.rows}
    for name in ("batch_0000.safetensors", "batch_0001.safetensors"):
        a, b = (load_file(str(tmp_path / f / "edits" / name)) for f in ("d", "s"))
        assert sorted(a) == [
            "adam_step",
            "delta",
            "exp_avg",
            "exp_avg_sq",
            "step",
        ]  # the first version's file
        assert a["delta"].dim() == 3 and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(str(tmp_path / "d" / "edits" / "batch_0000.safetensors"))["delta"]
    assert losses["unguided"] == pytest.approx(FIRST_VERSION["unguided"], rel=1e-3)
    assert losses["optimum"] == pytest.approx(FIRST_VERSION["optimum"], rel=1e-3)
    assert first.abs().sum().item() == pytest.approx(FIRST_VERSION["delta_abs_sum"], rel=1e-3)
    # a folder of the first version: its record has none of the new settings; it resumes, to the same rows
    record_path = tmp_path / "d" / "ceiling_run.json"
    record = json.loads(record_path.read_text())
    for k in ("edits", "interval", "cfg_intervals"):
        del record["config"][k]
    record_path.write_text(json.dumps(record))
    again = ceiling(tiny_sd, three, output_dir=tmp_path / "d", config=CeilingConfig(**CFG, cfg_intervals=()))
    assert again.rows == [r for r in default.rows if not r["row"].startswith("cfg [")]  # its rows: fewer CFG
    record_path.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"edits: 'static' -> 'blocks:2'.*another --out"):
        ceiling(tiny_sd, three, output_dir=tmp_path / "d", config=CeilingConfig(**CFG, edits="blocks:2"))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_an_interrupted_blocks_ceiling_resumes_exactly_and_refuses_another_layout(
    tiny_sd, prompts, tmp_path, monkeypatch
):
    config = CeilingConfig(**{**CFG, "num_inference_steps": 4, "edits": "blocks:2", "interval": "0,0.75",
                              "draws": 3, "cfg_intervals": ("0.25,0.75",)})  # fmt: skip
    three = prompts[:3]
    full = ceiling(tiny_sd, three, output_dir=tmp_path / "full", config=config)
    interrupt_ceiling(
        monkeypatch, lambda: ceiling(tiny_sd, three, output_dir=tmp_path / "cut", config=config)
    )
    cut = ceiling(tiny_sd, three, output_dir=tmp_path / "cut", config=config)
    for name in ("batch_0000.safetensors", "batch_0001.safetensors"):
        a, b = (load_file(str(tmp_path / f / "edits" / name)) for f in ("full", "cut"))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name
        assert a["delta"].shape[1] == 2 and a["edit_steps"].tolist() == [[0, 2], [2, 3]]  # steps 0-1, step 2
    assert cut.rows == full.rows
    rows = {r["row"]: r for r in full.rows}
    assert list(rows) == ["unguided", "cfg", "cfg-first", "cfg [0.25,0.75)", "optimum"]
    assert [rows[r]["nfe"] for r in rows] == [4, 8, 4, 6, 4]  # CFG: one more per guided step
    assert rows["optimum"]["eval_loss"] < rows["unguided"]["eval_loss"]
    saved = json.loads((tmp_path / "full" / "ceiling.json").read_text())
    assert saved["config"]["edits"] == "blocks:2" and saved["comparison"]["same_nfe"]["limit"] == 4
    for other, words in (({"edits": "static"}, "edits: 'blocks:2' -> 'static'"),
                         ({"interval": "0,1"}, "interval: '0,0.75' -> '0,1'"),
                         ({"edits": "steps"}, "edits: 'blocks:2' -> 'steps'")):  # fmt: skip
        with pytest.raises(InputError, match="another --out folder") as e:
            ceiling(tiny_sd, three, output_dir=tmp_path / "full", config=replace(config, **other))
        assert words in str(e.value)
    # CFG rows are sampled anew by every run: other intervals are not another run
    fewer = ceiling(tiny_sd, three, output_dir=tmp_path / "full",
                    config=replace(config, cfg_intervals=()))  # fmt: skip
    assert [r["row"] for r in fewer.rows] == ["unguided", "cfg", "cfg-first", "optimum"]
    # a batch file of another layout behind the same record (a restored ceiling_run.json): named, with the fix
    edit = tmp_path / "full" / "edits" / "batch_0001.safetensors"
    layout_keys = ("edit_steps", "edit_timesteps", "num_inference_steps")
    saved = load_file(str(edit))
    static = {
        k: v[:, 0].contiguous() if v.dim() == 4 else v for k, v in saved.items() if k not in layout_keys
    }
    save_file(static, str(edit))  # as a static run writes it
    with pytest.raises(InputError, match=r"batch_0001.safetensors is of another edit layout \(one edit on every "
                       r"step.*this run's: 2 edits on steps 0-1, 2-2 of 4.*Delete it"):  # fmt: skip
        ceiling(tiny_sd, three, output_dir=tmp_path / "full", config=config)


@pytest.mark.integration  # the mini model end to end
def test_ceiling_command_with_per_step_edits_on_the_mini_model(tmp_path, capsys):
    args = [
        "--limit",
        "2",
        "--steps",
        "2",
        "--pool",
        "1",
        "--draws",
        "2",
        "--eval-draws",
        "2",
        "--teacher-steps",
        "2",
    ]
    args += [
        "--num-inference-steps",
        "4",
        "--edits",
        "steps",
        "--interval",
        "0,0.5",
        "--cfg-intervals",
        "0,0.25",
    ]
    assert main(["-q", "ceiling", *args, "--device", "cpu", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "ceiling.json").read_text())
    rows = {r["row"]: r for r in saved["rows"]}
    assert list(rows) == ["unguided", "cfg", "cfg-first", "cfg [0,0.25)", "optimum", "sharpener"]
    assert (
        rows["optimum"]["nfe"] == 4 and rows["cfg [0,0.25)"]["nfe"] == 5 and 0 <= rows["optimum"]["all"] <= 1
    )
    assert load_file(str(tmp_path / "edits" / "batch_0000.safetensors"))["delta"].shape[1] == 2  # steps 0, 1
    out = capsys.readouterr().out
    assert "| optimum | 4 |" in out and "Best CFG row at <= 5 NFE" in out
    assert np.isfinite(rows["optimum"]["eval_loss"])
