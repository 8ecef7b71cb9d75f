import numpy as np
import pytest
import torch

from dicecfg import Sharpener, generate, sharpen
from dicecfg.errors import InputError

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


def test_alpha_zero_and_untrained_equal_unguided(tiny_sd):
    base = _images(tiny_sd, "unguided", batch_size=4)
    assert np.array_equal(
        base, _images(tiny_sd, "dice", sharpener=_random_sharpener(), alpha=0.0, batch_size=4)
    )
    assert np.array_equal(base, _images(tiny_sd, "dice", sharpener=Sharpener(32, 64, 4), batch_size=4))
    assert not np.array_equal(base, _images(tiny_sd, "dice", sharpener=_random_sharpener(), batch_size=4))


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


def test_same_seed_same_image_at_batch_1_and_4(tiny_sd):
    sharp = _random_sharpener()
    for method in ("cfg", "dice"):
        a = _images(tiny_sd, method, sharpener=sharp, batch_size=1, seeds=[5, 6, 7, 8])
        b = _images(tiny_sd, method, sharpener=sharp, batch_size=4, seeds=[5, 6, 7, 8])
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, method  # 1 level of 255: float rounding only


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


def test_negative_prompt_changes_dice_and_cfg(tiny_sd):
    sharp = _random_sharpener()
    for method in ("dice", "cfg"):
        a = _images(tiny_sd, method, sharpener=sharp)
        b = _images(tiny_sd, method, sharpener=sharp, negative_prompt="a blue triangle")
        assert not np.array_equal(a, b), method


def test_v_prediction_pipeline_samples(tiny_sd_v_dir):
    from dicecfg import load_pipeline

    pipe = load_pipeline(tiny_sd_v_dir)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert np.array_equal(_images(pipe, "unguided"), _images(pipe, "dice", sharpener=Sharpener(32, 64, 4)))


def test_bad_inputs(tiny_sd):
    with pytest.raises(InputError, match="Unknown method"):
        list(generate(tiny_sd, P, method="magic"))
    with pytest.raises(InputError, match="needs a sharpener"):
        list(generate(tiny_sd, P, method="dice", num_inference_steps=1, progress=False))
    with pytest.raises(InputError, match="seeds"):
        list(generate(tiny_sd, P, method="cfg", seeds=[1, 2]))
    with pytest.raises(InputError, match=">= 1"):
        list(generate(tiny_sd, P, method="cfg", num_inference_steps=0))


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


def test_the_compile_notice_on_a_cpu_says_minutes(tiny_sd, cheap_compile, caplog):
    from dicecfg.families import family_of
    from dicecfg.sampling.fast import compiled_denoiser

    with caplog.at_level("INFO", logger="dicecfg.sampling.fast"):
        with compiled_denoiser(tiny_sd, family_of(tiny_sd).denoiser(tiny_sd), training=True):
            pass
    (notice,) = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert "several minutes on a CPU" in notice and "a minute or more" not in notice


def test_no_torchvision_notices_from_python(tiny_sd_dir):
    import subprocess
    import sys

    where = str(tiny_sd_dir)
    code = (  # a fresh process: transformers prints the notices only while the first pipeline loads
        f"import logging, warnings; from dicecfg import load_pipeline; load_pipeline({where!r}); "
        "logging.getLogger('mine').warning('my own warning'); warnings.warn('my own UserWarning')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "requires torchvision" not in res.stderr  # the command line hid them, Python did not
    assert "my own warning" in res.stderr and "my own UserWarning" in res.stderr  # the caller's still show


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
        checks.warn_truncated(tiny_sd, family_of(tiny_sd), prompts) == 9
    )  # the exact count, repeats included
    assert max(map(len, batches)) <= 3  # one call with every prompt before: 5.5 GB for 1M prompts
    assert sorted(p for b in batches for p in b) == sorted([*long, edge])  # the short ones skipped
