import json
import logging
import os

import numpy as np
import pytest
import torch
from helpers import FAST_FAULTS, dice_sample, one_line_error

from dicecfg import Dice, DistillConfig, Sharpener, distill, generate, sharpen
from dicecfg.cli import main
from dicecfg.errors import InputError, OutOfMemoryError

STEPS = 4
P = [
    "a red circle",
    "a blue square to the left of a green triangle",
    "a small green circle",
    "a large red square",
]


def _images(pipe, method, **kw):
    return np.stack(
        [s.image for s in generate(pipe, P, method=method, num_inference_steps=STEPS, progress=False, **kw)]
    )


def _random_sharpener(dim=32, seed=0):
    torch.manual_seed(seed)
    s = Sharpener(dim, inner_dim=64, heads=4)
    for p in s.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return s


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_alpha_zero_and_untrained_equal_unguided(tiny_sd):
    base = _images(tiny_sd, "unguided", batch_size=4)
    assert np.array_equal(base, _images(tiny_sd, "dice:alpha=0", sharpener=_random_sharpener(), batch_size=4))
    assert np.array_equal(base, _images(tiny_sd, "dice", sharpener=Sharpener(32, 64, 4), batch_size=4))
    assert not np.array_equal(base, _images(tiny_sd, "dice", sharpener=_random_sharpener(), batch_size=4))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_sharpen_kwargs_run_stock_pipeline_like_generate(tiny_sd):
    sharp = _random_sharpener()
    kwargs = sharpen(tiny_sd, sharp, P[:2])
    assert kwargs["prompt_embeds"].shape == (2, 77, 32)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    direct = tiny_sd(
        **kwargs, guidance_scale=1.0, num_inference_steps=STEPS, generator=gens, output_type="np"
    ).images
    via = [
        s.image
        for s in generate(
            tiny_sd, P[:2], method="dice", sharpener=sharp, num_inference_steps=STEPS, progress=False
        )
    ]
    assert np.array_equal((np.clip(direct, 0, 1) * 255).round().astype(np.uint8), np.stack(via))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_same_seed_same_image_at_batch_1_and_4(tiny_sd):
    sharp = _random_sharpener()
    for method in ("cfg", "dice"):
        a = _images(tiny_sd, method, sharpener=sharp, batch_size=1, seeds=[5, 6, 7, 8])
        b = _images(tiny_sd, method, sharpener=sharp, batch_size=4, seeds=[5, 6, 7, 8])
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, method  # 1 level of 255: float rounding only


def test_batch_size_help_says_what_holds():
    """Batched kernels round differently (measured on the mini model, 8 prompts: 1/255 at most, in 3-5 of 8
    images): every --batch-size help says so instead of "results do not depend on it"."""
    from dataclasses import fields

    from dicecfg.evaluation.demo import DemoJob
    from dicecfg.evaluation.evaluate import EvalJob
    from dicecfg.evaluation.tune import TuneJob
    from dicecfg.sampling.job import SampleJob

    for job in (SampleJob, EvalJob, DemoJob, TuneJob):
        (help_text,) = [f.metadata["help"] for f in fields(job) if f.name == "batch_size"]
        assert "1/255 at most" in help_text and "do not depend" not in help_text, job.__name__


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_methods_differ_and_report_nfe(tiny_sd):
    out = {
        m: list(
            generate(
                tiny_sd,
                P[:1],
                method=m,
                sharpener=_random_sharpener(),
                num_inference_steps=STEPS,
                progress=False,
            )
        )[0]
        for m in ("unguided", "cfg", "scaling", "dice")
    }
    assert out["cfg"].nfe == 2 * STEPS and out["dice"].nfe == STEPS and out["unguided"].nfe == STEPS
    assert not np.array_equal(out["cfg"].image, out["unguided"].image)
    assert not np.array_equal(out["scaling"].image, out["unguided"].image)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_negative_prompt_changes_dice_and_cfg(tiny_sd):
    sharp = _random_sharpener()
    for method in ("dice", "cfg"):
        a = _images(tiny_sd, method, sharpener=sharp)
        b = _images(tiny_sd, method, sharpener=sharp, negative_prompt="a blue triangle")
        assert not np.array_equal(a, b), method


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_v_prediction_pipeline_samples(tiny_sd_v_dir):
    from dicecfg import load_pipeline

    pipe = load_pipeline(tiny_sd_v_dir)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert np.array_equal(_images(pipe, "unguided"), _images(pipe, "dice", sharpener=Sharpener(32, 64, 4)))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bad_inputs(tiny_sd):
    with pytest.raises(InputError, match="Unknown method"):
        list(generate(tiny_sd, P, method="magic"))
    with pytest.raises(InputError, match="needs a sharpener"):
        list(generate(tiny_sd, P, method="dice", num_inference_steps=1, progress=False))
    with pytest.raises(InputError, match="seeds"):
        list(generate(tiny_sd, P, method="cfg", seeds=[1, 2]))
    with pytest.raises(InputError, match=">= 1"):
        list(generate(tiny_sd, P, method="cfg", num_inference_steps=0))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_pipeline_step_bar_silenced_and_restored(tiny_sd, capsys):
    from dicecfg.families import family_of
    from dicecfg.sampling.generate import sample_batch
    from dicecfg.sampling.methods import CFG

    fam = family_of(tiny_sd)
    cond, neg = fam.encode(tiny_sd, P[:1]), fam.encode(tiny_sd, [""])
    sample_batch(tiny_sd, fam, CFG(), cond, neg, [torch.Generator().manual_seed(0)], num_inference_steps=2)
    assert "2/2" not in capsys.readouterr().err  # no per-step bar of the pipeline
    assert not hasattr(tiny_sd, "_progress_bar_config")  # nothing left behind
    tiny_sd.set_progress_bar_config(leave=False)
    list(generate(tiny_sd, P[:1], method="unguided", num_inference_steps=2, progress=False))
    assert tiny_sd._progress_bar_config == {"leave": False}  # the user's setting is back


def test_a_byte_order_mark_does_not_reach_the_first_prompt(tmp_path):
    from dicecfg.sampling.prompts import load_prompts

    (tmp_path / "p.txt").write_bytes("\ufeffa red circle\na blue square\n".encode())
    (tmp_path / "p.jsonl").write_bytes('\ufeff{"text": "a red circle"}\n'.encode())
    assert load_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    assert load_prompts(tmp_path / "p.jsonl") == ["a red circle"]


BAD_TEXT = "a red \udcff circle"  # the byte 0xFF of a command-line argument (Python's surrogateescape)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_prompts_that_are_not_text_are_refused_before_encoding(tiny_sd):
    from dicecfg.sampling.prompts import collect_prompts

    sharp = _random_sharpener()
    calls = [
        lambda: list(generate(tiny_sd, ["ok", BAD_TEXT], method="unguided", progress=False)),
        lambda: sharpen(tiny_sd, sharp, ["ok", BAD_TEXT]),
        lambda: collect_prompts(["ok", BAD_TEXT], None),
    ]
    for call in calls:  # the tokenizer's TypeError before: one line naming the prompt and its position
        with pytest.raises(InputError, match=r"^Prompt 2 \('a red ', then byte 0xFF\) is not valid text"):
            call()
    with pytest.raises(InputError, match=r"^Negative prompt 1 \('', then U\+D800\) is not valid text"):
        list(generate(tiny_sd, ["ok"], method="cfg", negative_prompt="\ud800", progress=False))
    with pytest.raises(InputError, match="NUL byte"):
        sharpen(tiny_sd, sharp, "a\0b")


def test_prompt_files_that_are_not_text_name_the_line(tmp_path):
    from dicecfg.sampling.prompts import load_prompts

    (tmp_path / "p.jsonl").write_text('{"text": "a red circle"}\n{"text": "a \\ud800 square"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:2: the caption holds an escape that is not a character"):
        load_prompts(tmp_path / "p.jsonl")
    (tmp_path / "p.txt").write_bytes(b"a red circle\n\na blue \xff square\n")
    with pytest.raises(InputError, match=r"p.txt:3: not valid UTF-8"):
        load_prompts(tmp_path / "p.txt")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_the_compile_notice_on_a_cpu_says_minutes(tiny_sd, cheap_compile, caplog):
    from dicecfg.families import family_of
    from dicecfg.sampling.fast import compiled_denoiser

    with caplog.at_level("INFO", logger="dicecfg.sampling.fast"):
        with compiled_denoiser(tiny_sd, family_of(tiny_sd).denoiser(tiny_sd), training=True):
            pass
    (notice,) = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert "several minutes on a CPU" in notice and "a minute or more" not in notice


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_no_torchvision_notices_from_python(tiny_sd_dir):
    import subprocess
    import sys

    where = str(tiny_sd_dir)
    code = (  # a fresh process: transformers prints the notices only while the first pipeline loads
        f"import logging, warnings; from dicecfg import load_pipeline; load_pipeline({where!r}); "
        "logging.getLogger('mine').warning('my own warning'); warnings.warn('my own UserWarning')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # CI sets it to "ignore"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "requires torchvision" not in res.stderr  # the command line hid them, Python did not
    assert "my own warning" in res.stderr and "my own UserWarning" in res.stderr  # the caller's still show


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_long_prompts_are_counted_in_bounded_chunks(tiny_sd, monkeypatch):
    from dicecfg.families import family_of
    from dicecfg.sampling import checks

    tok, batches = tiny_sd.tokenizer, []

    class Counting:  # the pipeline's tokenizer, recording how many texts each call gets
        model_max_length = tok.model_max_length

        def __call__(self, texts, **kw):
            batches.append(list(texts))
            return tok(texts, **kw)

    monkeypatch.setattr(tiny_sd, "tokenizer", Counting(), raising=False)
    monkeypatch.setattr(checks, "TOKENIZE_CHUNK", 3)
    long = [f"a red circle {'and a blue square ' * 12}{i}" for i in range(7)]  # well over 77 tokens each
    short = [f"a red circle {i}" for i in range(50)]  # ASCII, shorter than 77 - 3 characters: never truncated
    edge = "a " * 38 + "red"  # 79 characters, 41 tokens: tokenized, not counted
    prompts = [*long, *short, *long[:2], edge]
    assert (
        checks.check_prompts(tiny_sd, family_of(tiny_sd), prompts) == 9
    )  # the exact count, repeats included
    assert max(map(len, batches)) <= 3  # one call with every prompt before: 5.5 GB for 1M prompts
    assert sorted(p for b in batches for p in b) == sorted([*long, edge])  # the short ones skipped


# ---- bad input and faults (docs/reliability.md) ------------------------------------------------------------
LONG = " ".join(["red circle"] * 60)  # 120 words: past CLIP's 77 tokens


def _no_pipeline_call(monkeypatch, pipe, exc=None):
    def call(self, *a, **k):
        raise exc or AssertionError("the pipeline must not run")

    monkeypatch.setattr(type(pipe), "__call__", call)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
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


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_long_negative_prompts_are_counted_apart(tiny_sd, caplog):
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        list(generate(tiny_sd, ["a", "b"], method="cfg", negative_prompt=LONG, num_inference_steps=1,
                      progress=False))  # fmt: skip
    ours = [r for r in caplog.records if r.name.startswith("dicecfg")]  # diffusers warns per batch on its own
    hits = [r.getMessage() for r in ours if "truncated" in r.getMessage()]
    assert len(hits) == 1 and hits[0].startswith("2 of 2 negative prompts"), hits


def test_prompt_files_blank_lines_and_jsonl_fields(tmp_path):
    from dicecfg.sampling.prompts import load_prompts

    (tmp_path / "p.txt").write_text("\n  a red circle \n\n\t\na blue square\n")
    assert load_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n\n{"prompt": "b"}\n{"label": "c"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:4: no caption field"):
        load_prompts(tmp_path / "p.jsonl")
    (tmp_path / "bad.txt").write_bytes(b"a red circle\nblue \xff\xfe square\n")
    with pytest.raises(InputError, match=r"bad.txt:2: not valid UTF-8"):
        load_prompts(tmp_path / "bad.txt")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_invalid_size_refused_before_work(tiny_sd, monkeypatch):
    _no_pipeline_call(monkeypatch, tiny_sd)
    for kw in (dict(height=20), dict(width=-8), dict(height=0)):
        with pytest.raises(InputError, match="multiple of 8"):
            list(generate(tiny_sd, ["a red circle"], method="unguided", progress=False, **kw))
    with pytest.raises(InputError, match="num_inference_steps"):
        list(generate(tiny_sd, ["a"], method="unguided", num_inference_steps=0, progress=False))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_alpha_out_of_range_warns(tiny_sd, caplog):
    sharp = Sharpener(32, inner_dim=64, heads=4)
    for alpha in (-1.0, 5.0):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dicecfg"):
            list(generate(tiny_sd, ["a"], method=Dice(sharp, alpha), num_inference_steps=1, progress=False))
        assert any("outside the usual range" in r.getMessage() for r in caplog.records), alpha
    with pytest.raises(InputError, match="finite"):
        sharpen(tiny_sd, sharp, ["a"], alpha=float("nan"))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_out_of_memory_suggests_smaller_batch(tiny_sd_dir, tiny_sd, monkeypatch, capsys):
    _no_pipeline_call(monkeypatch, tiny_sd, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    with pytest.raises(OutOfMemoryError, match="batch of 2 images.*smaller --batch-size"):
        list(generate(tiny_sd, ["a", "b", "c"], method="cfg", batch_size=2, progress=False))
    code = main(["sample", "a", "--model", str(tiny_sd_dir), "--method", "cfg", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch-size" in err and err.count("\n") == 1


@pytest.mark.integration  # end to end: a pipeline, a command or a process
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
        distill(tiny_sd, ["a"], config=DistillConfig(steps=1, **FAST_FAULTS), output_dir=tmp_path / "never")
    monkeypatch.undo()
    code = dice_sample(
        tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--height", "65536", "--width", "65536"
    )
    one_line_error(capsys, code, "GiB")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_sample_into_a_folder_with_samples_keeps_them(tiny_sd_dir, tmp_path):
    out = tmp_path / "samples"
    assert dice_sample(tiny_sd_dir, out, "a red circle", "--method", "unguided") == 0
    first = (out / "0000_unguided_seed0.png").read_bytes()
    assert dice_sample(tiny_sd_dir, out, "a blue square", "a red circle", "--method", "cfg") == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["0000_unguided_seed0.png", "0001_cfg_seed0.png", "0002_cfg_seed1.png"]
    assert (out / "0000_unguided_seed0.png").read_bytes() == first
    records = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == names  # every image described, in order
    assert [r["prompt"] for r in records] == ["a red circle", "a blue square", "a red circle"]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_cfg_at_w_one_is_recorded_as_one_pass_and_below_refused(
    tiny_sd_dir, tiny_sd, tmp_path, capsys, monkeypatch
):
    from dicecfg.evaluation.images import Row
    from dicecfg.sampling.methods import CFG

    (s,) = generate(tiny_sd, ["a"], method="cfg:w=1", num_inference_steps=2, progress=False)
    assert s.nfe == 2 and s.params == {"guidance_scale": 1.0, "start": 0.0, "stop": 1.0}
    assert Row(CFG(1.0), 20).nfe == 20 and Row(CFG(5.0), 20).nfe == 40
    assert dice_sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--guidance-scale", "1") == 0
    assert json.loads((tmp_path / "s" / "samples.jsonl").read_text())["nfe"] == 1
    monkeypatch.setattr("dicecfg.pipeline.load_pipeline", lambda *a, **k: pytest.fail("loaded"))
    for w in ("0.5", "nan", "inf"):
        code = dice_sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--guidance-scale", w)
        one_line_error(capsys, code, "guidance")
    for scales in (["1", "nan"], ["0"]):
        one_line_error(capsys, main(["eval", "--cfg-scales", *scales, "--model", str(tiny_sd_dir), "-q"]))
    with pytest.raises(InputError, match="below 1"):
        list(generate(tiny_sd, ["a"], method="cfg:w=0.5", progress=False))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_options_the_method_ignores_get_a_notice(tiny_sd_dir, tmp_path, capsys, caplog):
    code = dice_sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--sharpener", "/does/not/exist")
    one_line_error(capsys, code, "does not exist")
    with caplog.at_level(logging.WARNING, logger="dicecfg"):
        assert dice_sample(tiny_sd_dir, tmp_path / "s", "a", "--method", "cfg", "--alpha", "3") == 0
    assert any("--method cfg ignores --alpha" in r.getMessage() for r in caplog.records)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_settings_that_overflow_are_refused_never_written_black(tiny_sd):
    """cfg:w=1e30 and scaling:s=1e308 are finite settings whose arithmetic is not: refused with one line naming
    what to change, instead of a NaN image saved as black."""
    for method, message in (
        ("cfg:w=1e30", "came out not finite"),
        ("scaling:s=1e308", "makes the embedding overflow"),
    ):
        with pytest.raises(InputError, match=message) as e:
            list(generate(tiny_sd, ["a red circle"], method=method, num_inference_steps=2, progress=False))
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="not finite at alpha=1e"):
        sharpen(tiny_sd, _random_sharpener(), ["a red circle"], alpha=1e38)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_settings_next_to_a_method_are_refused_with_their_place(tiny_sd):
    """0.1's flat keywords (alpha=, guidance_scale=, scale=) would reach the pipeline's **kwargs and be ignored:
    refused, naming where the setting goes."""
    for key, where in (("alpha", "dice:alpha="), ("guidance_scale", "cfg:w="), ("scale", "scaling:s=")):
        with pytest.raises(InputError, match=f"takes {key} in the method.*{where}"):
            list(
                generate(
                    tiny_sd, ["a"], method="unguided", num_inference_steps=1, progress=False, **{key: 2.0}
                )
            )


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_sample_adds_only_to_its_own_log_and_numbers(tiny_sd_dir, tmp_path, capsys):
    """Issue 33 rows 14-15: a samples.jsonl of someone else's, a symbolic link of that name (to a file outside
    the folder) or a folder of that name is refused in one line before the model loads, and left as it was; a
    user file such as 2024_report.pdf does not move the numbering."""
    out = tmp_path / "s"
    out.mkdir()
    (out / "samples.jsonl").write_text("name,score\nmine,3\n")
    one_line_error(
        capsys, dice_sample(tiny_sd_dir, out, "a", "--method", "unguided"), "not written by `dice sample`"
    )
    assert (out / "samples.jsonl").read_text() == "name,score\nmine,3\n"
    (out / "samples.jsonl").unlink()
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"file": "x.png", "seed": 0, "method": "cfg"}\n')
    (out / "samples.jsonl").symlink_to(outside)
    one_line_error(capsys, dice_sample(tiny_sd_dir, out, "a", "--method", "unguided"), "symbolic link")
    assert outside.read_text() == '{"file": "x.png", "seed": 0, "method": "cfg"}\n'
    (out / "samples.jsonl").unlink()
    (out / "samples.jsonl").mkdir()
    one_line_error(capsys, dice_sample(tiny_sd_dir, out, "a", "--method", "unguided"), "is a folder")
    (out / "samples.jsonl").rmdir()
    (out / "2024_report.pdf").write_text("my report")
    assert dice_sample(tiny_sd_dir, out, "a", "--method", "unguided") == 0
    assert (out / "0000_unguided_seed0.png").is_file() and (
        out / "2024_report.pdf"
    ).read_text() == "my report"


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_images_a_stopped_run_wrote_get_their_records_back(tiny_sd_dir, tmp_path, caplog):
    """Issue 33 row 10: images whose lines never reached samples.jsonl (a process killed after writing its PNGs,
    before rank 0 appended them) get their records on the next run, from the record each PNG carries."""
    out = tmp_path / "s"
    assert (
        dice_sample(tiny_sd_dir, out, "a red circle", "a blue square", "a green star", "--method", "cfg") == 0
    )
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text(lines[0] + "\n")  # the last two lines never written
    assert dice_sample(tiny_sd_dir, out, "a red circle", "--method", "unguided") == 0
    again = (out / "samples.jsonl").read_text().splitlines()
    assert again[:3] == lines and json.loads(again[3])["file"] == "0003_unguided_seed0.png"
    assert "recovered the records of 2 image(s)" in caplog.text
