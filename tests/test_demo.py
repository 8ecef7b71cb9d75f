"""`dice demo` without a model: which prompts the grid shows, the statistics, fair timing, the picture, the text.
(The demo on the shipped model, and its agreement with `dice eval`, is in test_shipped.py.)"""

import numpy as np
import pytest

from dicecfg.evaluation import demo
from dicecfg.evaluation.demo import grid_columns, paired, sample_in_turns, stderr
from dicecfg.evaluation.report import GREEN, NEXT_STEPS, RED, demo_grid, demo_summary, demo_table
from dicecfg.sampling.grid import annotated_grid, font, wrap


def test_grid_columns_take_disagreements_first_in_heldout_order():
    unguided = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    cfg = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    dice = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1])  # methods disagree on prompts 1, 4 and 8
    cols, differ = grid_columns([unguided, cfg, dice], 4)
    assert differ == 3 and cols == [0, 1, 2, 4]  # ceil(4/2) = 2 disagreements, then the first agreeing ones
    assert grid_columns([unguided, cfg, dice], 5)[0] == [0, 1, 2, 4, 8]
    assert grid_columns([unguided, cfg, dice], 8)[0] == [0, 1, 2, 3, 4, 5, 6, 8]  # 3 differ < 4: all of them
    assert grid_columns([cfg, cfg, cfg], 3) == ([0, 1, 2], 0)  # nothing to contrast: the first three
    assert grid_columns([unguided, cfg, dice], 50)[0] == list(range(10))  # k > n: every prompt
    many = grid_columns([np.array([1, 0, 1, 0, 1]), np.array([0, 1, 0, 1, 1])], 4)  # one agreeing prompt
    assert many == ([0, 1, 2, 4], 4)


def test_paired_difference_and_standard_error():
    base = np.array([0, 1, 1, 1, 0, 0, 1, 1], dtype=float)
    method = np.array([1, 1, 0, 1, 1, 0, 1, 1], dtype=float)
    p = paired(method, base)
    d = method - base
    assert p["fixed"] == 2 and p["broken"] == 1 and p["diff"] == pytest.approx(1 / 8)
    assert p["stderr"] == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum() / 7 / 8))
    assert stderr(np.ones(5)) == 0 and stderr(np.array([1.0])) == 0
    # 0/1 data: the binomial formula with n - 1
    x = np.array([1.0] * 30 + [0.0] * 10)
    assert stderr(x) == pytest.approx(np.sqrt(0.75 * 0.25 / 39))


def test_methods_are_warmed_up_then_take_turns(monkeypatch):
    calls = []

    def fake_generate(pipe, prompts, *, method, seeds, num_inference_steps=20, **kw):
        calls.append((method, list(prompts), num_inference_steps, kw["batch_size"], kw["progress"]))
        return iter([f"{method}:{p}" for p in prompts])

    monkeypatch.setattr(demo, "generate", fake_generate)
    prompts = [f"p{i}" for i in range(7)]
    out = sample_in_turns(
        None, prompts, range(7), {m: m for m in "abc"}, batch_size=3, progress=False, num_inference_steps=20
    )
    warm, timed = calls[:3], calls[3:]
    assert [(c[0], c[1], c[2]) for c in warm] == [(m, ["p0", "p1", "p2"], 1) for m in "abc"]
    assert [c[0] for c in timed] == list("abc" + "bca" + "cab")  # every method first once, then it rotates
    assert all(c[2] == 20 and c[3] == 3 and c[4] is False for c in timed)
    assert out == {m: [f"{m}:{p}" for p in prompts] for m in "abc"}  # each method saw every prompt in order


def _summary(n=6, shown=(0, 1, 2)):
    rng = np.random.default_rng(0)
    correct = {
        "unguided": [1, 0, 1, 1, 0, 1][:n],
        "cfg": [1] * n,
        "peer": [1, 1, 1, 1, 0, 1][:n],
        "dice": [1, 1, 1, 1, 0, 1][:n],
    }
    base = np.array(correct["unguided"], float)
    methods = []
    for m, setting, nfe, sec in (
        ("unguided", "-", 20, 0.25),
        ("cfg", "w=5", 40, 0.40),
        ("peer", "w=5 on [0,0.1)", 22, 0.27),
        ("dice", "alpha=1", 20, 0.24),
    ):
        c = np.array(correct[m], float)
        methods.append(
            {
                "method": m,
                "params": {},
                "setting": setting,
                "nfe": nfe,
                "seconds_per_image": sec,
                "align_all": c.mean(),
                "stderr": stderr(c),
                "correct": correct[m],
                "failed": [[] if ok else ["relation", "size"] for ok in correct[m]],
                **({"vs_unguided": paired(c, base)} if m != "unguided" else {}),
            }
        )
    images = {m: rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for m in correct}
    summary = {
        "job": {"steps": 20},
        "rule": f"the first {n} held-out prompts with their fixed seeds",
        "prompts": [
            f"a picture of a big red circle above a little blue square on gray {i}" for i in range(n)
        ],
        "methods": methods,
        "cfg_dice_time_ratio": 0.40 / 0.24,
        "shown": list(shown),
        "disagree": 2,
        "eval_command": f"dice eval --limit {n}",
        "grid": "dice-demo/grid.png",
    }
    return summary, images


def test_annotated_grid_frames_tiles_in_place():
    colours = [[(200, 0, 200), (0, 200, 200)], [(200, 200, 0), (90, 90, 250)]]
    rows = [[np.full((16, 16, 3), c, np.uint8) for c in row] for row in colours]
    frames = [[GREEN, RED], [RED, GREEN]]
    long = "a picture of a big red circle to the left of a little blue square on a gray background"
    img = np.asarray(
        annotated_grid(
            rows,
            row_labels=["one", "two"],
            col_labels=[long, "short"],
            frames=frames,
            notes=[["ok", "wrong: relation"], ["wrong: size", "ok"]],
            title="a title " * 30,
            scale=3,
        )
    )
    where = {}
    for r, row in enumerate(colours):
        for c, colour in enumerate(row):
            ys, xs = np.nonzero((img == colour).all(-1))
            assert len(ys) == (16 * 3) ** 2, (r, c)  # the whole tile, enlarged 3x, and nothing else
            where[r, c] = (ys.min(), xs.min())
            assert tuple(img[ys.min() - 2, xs.min() + 5]) == frames[r][c]  # its frame, in its colour
            assert tuple(img[ys.max() + 2, xs.max() - 5]) == frames[r][c]
    assert where[0, 0][1] < where[0, 1][1] and where[0, 0][0] == where[0, 1][0]  # columns left to right
    assert where[0, 0][0] < where[1, 0][0] and where[0, 0][1] == where[1, 0][1]  # rows top to bottom
    assert (img[: where[0, 0][0] - 4] < 128).any()  # title and column labels drawn above the tiles


def test_wrap_keeps_every_word_and_the_width():
    fnt = font(13)
    text = "a picture of a big purple triangle over a small yellow diamond on a black background"
    lines = wrap(text, fnt, 120)
    assert " ".join(lines) == text and len(lines) > 2
    assert all(fnt.getlength(line) <= 120 for line in lines)
    assert wrap("unbreakable-word-longer-than-the-width", fnt, 20) == [
        "unbreakable-word-longer-than-the-width"
    ]
    assert wrap("two\nlines", fnt, 500) == ["two", "lines"]


def test_demo_grid_marks_each_tile_with_the_verdict():
    summary, images = _summary()
    img = np.asarray(demo_grid(summary, images))
    n_green = (img == GREEN).all(-1).sum()
    n_red = (img == RED).all(-1).sum()
    # 12 tiles shown, one (unguided, prompt 1) wrong; a frame is 4 px around a 128 px tile
    frame_px = (128 + 8) ** 2 - 128**2
    assert n_red >= frame_px and n_green >= 11 * frame_px
    assert n_red < 2 * frame_px  # one red frame (and its note), not more


def test_demo_text_says_what_the_numbers_are():
    summary, _ = _summary()
    table = demo_table(summary)
    assert "| CFG w=5 | 40 | 0.400 | 1.000 ± 0.000 (6/6) | +0.333 ± 0.211 (2, 0) |" in table
    assert "| unguided | 20 | 0.250 | 0.667 ± 0.211 (4/6) | - |" in table
    text = demo_summary(summary, commands={"eval", "train"})
    assert "CFG w=5: 6 of 6 images right" in text and "it fixed 2 and broke 0" in text
    assert "DICE alpha=1: 5 of 6" in text and "+0.167 ± 0.167 against unguided, within noise" in text
    assert "CFG takes 1.67x DICE's wall time" in text and "dice eval --limit 6" in text
    assert (
        "The training-free peer (CFG w=5 on [0,0.1), 22 NFE) against DICE (20 NFE): +0.000 all-correct"
        in text
    )
    assert NEXT_STEPS["eval"] in text and NEXT_STEPS["train"] in text and NEXT_STEPS["serve"] not in text


def test_next_eval_step_names_the_demos_model():
    summary, _ = _summary()
    summary["eval_command"] = (
        "dice eval --limit 48 --methods unguided cfg --device cpu --model mini-fine --out x"
    )
    text = demo_summary(summary, commands={"eval"})
    assert "dice eval --model mini-fine --limit 512 --out runs/eval-mini-fine:" in text


def test_next_steps_name_real_commands():
    from dicecfg.cli import COMMANDS

    text = demo_summary(_summary()[0], commands=COMMANDS)
    for name, line in NEXT_STEPS.items():
        assert line.startswith(f"dice {name} ") or line.startswith(f"dice {name}:")
        assert (line in text) == (name in COMMANDS)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_demo_folder_keeps_files_it_did_not_write(tiny_sd_dir, tmp_path, monkeypatch, capsys):
    from dicecfg.bench.speed import random_sharpener
    from dicecfg.cli import main

    random_sharpener(32, "sd", 77, seed=3).save_pretrained(tmp_path / "s")
    args = ["-q", "demo", "--prompts", "1", "--shown", "1", "--steps", "1", "--batch-size", "1"]
    args += ["--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "s"), "--out"]
    assert main([*args, str(tmp_path / "d")]) == 0
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"demo.json", "grid.png"}
    demo.check_demo_folder(tmp_path / "d")  # a demo's own folder: a re-run may write it again

    def no_model(*a, **k):
        raise AssertionError("the model loaded")

    monkeypatch.setattr("dicecfg.pipeline.load_pipeline", no_model)
    mine = tmp_path / "my2"
    mine.mkdir()
    for name in ("grid.png", "demo.json"):
        (mine / name).write_text(f"my {name}\n")
    assert main([*args, str(mine)]) == 2  # refused before the model loads
    err = capsys.readouterr().err
    assert "demo.json, grid.png, not written by `dice demo`" in err and "another --out" in err
    assert all((mine / n).read_text() == f"my {n}\n" for n in ("grid.png", "demo.json"))
    assert main([*args[:3], "513", *args[4:], str(tmp_path / "e")]) == 2  # beyond the held-out set
    assert "must be <= 512" in capsys.readouterr().err
