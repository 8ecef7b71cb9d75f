"""Shared test helpers (`from helpers import FAST`): distillation settings, small checks and runners, and the
builders of tiny random pipelines, saved to disk by the fixtures in conftest.py and loaded through the real
loading code."""

from __future__ import annotations

from pathlib import Path

import torch

# ---- distillation settings: a few steps of a small sharpener on the tiny pipelines -------------------------
FAST = dict(  # enough steps' worth of data for the held-out loss to fall (test_distill)
    batch_size=8,
    lr=2e-3,
    teacher_pool=16,
    teacher_steps=3,
    eval_pairs=8,
    log_every=5,
    eval_every=0,
    checkpoint_every=10,
    progress=False,
)
FAST_FAULTS = dict(  # smaller; every step logged, a checkpoint every 4: faults land between checkpoints
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
FAST_FAMILY = dict(  # the SDXL and PixArt pipelines: a small sharpener (inner_dim 64, 4 heads)
    batch_size=4,
    lr=3e-3,
    teacher_pool=8,
    teacher_steps=2,
    eval_pairs=4,
    log_every=5,
    eval_every=0,
    checkpoint_every=5,
    inner_dim=64,
    heads=4,
    progress=False,
)
FAST_RECIPE = dict(  # the recipes' options on top: no lr (each recipe has its own), a small sharpener
    batch_size=4,
    teacher_pool=8,
    teacher_steps=2,
    eval_pairs=4,
    log_every=1,
    eval_every=0,
    checkpoint_every=5,
    inner_dim=64,
    heads=4,
    progress=False,
)


def same_weights(a, b) -> bool:
    """Whether two sharpeners hold bitwise the same tensors."""
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def ckpt_step(run_dir) -> int:
    """The step recorded in a run folder's checkpoint."""
    from safetensors import safe_open

    from dicecfg.runs.folder import CHECKPOINT

    with safe_open(str(Path(run_dir) / CHECKPOINT), framework="pt") as f:
        return int(f.metadata()["step"])


def one_line_error(capsys, code, *words) -> str:
    """Assert that a `dice` call ended with exit 2 and one line `dice: error: ...` holding ``words``; return
    the line."""
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dice: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


def dice_sample(model, out, *args) -> int:
    """`dice sample ARGS` on the CPU, one step, quiet, in-process: its exit code."""
    from dicecfg.cli import main

    return main(
        ["sample", *args, "--model", str(model), "--steps", "1", "--out", str(out), "--device", "cpu", "-q"]
    )


def image_folder_with_faults(root: Path, n_good: int, modes=("RGB",), bad: int = 0) -> Path:
    """An image folder (metadata.jsonl): ``n_good`` readable images saved in ``modes`` in turn, ``bad``
    unreadable files (junk, a cut PNG) and one listed file that is missing."""
    import json

    import numpy as np
    from PIL import Image

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


# ---- tiny random pipelines ---------------------------------------------------------------------------------
WORDS = (
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "small",
    "large",
    "left",
    "right",
    "of",
    "the",
    "to",
    "above",
    "below",
    "corgi",
    "on",
    "beach",
    "photo",
    "cat",
    "dog",
)
PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "triangle")] + [
    f"a {z} {c} {s} to the left of a {c2} {s2}"
    for z in ("small", "large")
    for c, c2 in (("red", "blue"), ("green", "red"), ("blue", "green"))
    for s, s2 in (("circle", "square"), ("triangle", "circle"))
]


def write_clip_tokenizer(out: Path, words=WORDS) -> None:
    """A real CLIP BPE tokenizer whose every word is one token (<|startoftext|> = 0, <|endoftext|> = 1 = pad)."""
    from dicecfg.bench.archs import word_clip_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    word_clip_tokenizer(words).save_pretrained(str(out))


def tiny_clip(out: Path, hidden: int, **extra):
    """The word-level tokenizer (saved under out/tokenizer_src) and a matching tiny CLIP text config."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer(out / "tokenizer_src")
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "tokenizer_src"))
    cfg = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return tokenizer, {**cfg, **extra}


def build_tiny_sd(out: Path, *, prediction_type: str = "epsilon", hidden: int = 32, seed: int = 0) -> Path:
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer, te_cfg = tiny_clip(out, hidden)
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
    )
    from dicecfg.minimodel.model import assemble_pipeline

    pipe = assemble_pipeline(text_encoder, tokenizer, unet, vae, scheduler)
    pipe.save_pretrained(str(out / "pipe"))
    return out / "pipe"


def random_sharpener(pipe, seed=0, mask_mode="keep", std=0.3):
    """A small sharpener that fits ``pipe``'s family, with random weights (std=0: untrained, a zero edit)."""
    from dicecfg import Sharpener
    from dicecfg.families import family_of

    fam = family_of(pipe)
    torch.manual_seed(seed)
    s = Sharpener(
        fam.dim(pipe),
        64,
        4,
        family=fam.name,
        num_tokens=fam.num_tokens(pipe),
        copy_first_token=fam.copy_first_token,
        mask_mode=mask_mode,
    )
    if std:
        for p in s.parameters():
            torch.nn.init.normal_(p, std=std)
    return s


# ---- SDXL and PixArt-alpha ---------------------------------------------------------------------------------
def _tiny_vae(blocks: int = 2):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,) * blocks,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        norm_num_groups=4,
        sample_size=16,
    )


def build_tiny_sdxl(out: Path, *, seed: int = 0) -> Path:
    """Two CLIP encoders (hidden 32 + 32: token width 64), the second with projection; a text_time UNet.

    Random weights would send most of the text's effect through the pooled embedding (which DICE passes through
    unchanged), so its input to the added time embedding is damped: as in the real SDXL, the prompt then acts
    mainly through cross-attention on the token states.
    """
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, te_cfg = tiny_clip(out, 32, projection_dim=32)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        norm_num_groups=8,
    )
    with torch.no_grad():
        unet.add_embedding.linear_1.weight[:, :32] *= 0.1  # the pooled text embedding comes first
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**te_cfg)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**te_cfg)),
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(str(out / "pipe"))
    return out / "pipe"


def build_tiny_pixart(out: Path, *, seed: int = 0) -> Path:
    """A tiny T5 encoder (d_model 32) with a word-level T5 tokenizer the test builds, and a tiny PixArt DiT.

    The stock pipeline only accepts sample sizes 32/64/128 (its resolution bins), so the latent is 32 x 32 with a
    x8 VAE (256-px images) and a 4 x 4 patch (64 image tokens).
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from dicecfg.bench.archs import word_t5_tokenizer

    torch.manual_seed(seed)
    tokenizer = word_t5_tokenizer(WORDS)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            is_gated_act=True,
            dense_act_fn="gelu_new",
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        in_channels=4,
        out_channels=8,
        patch_size=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=32,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_tiny_vae(4),
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(str(out / "pipe"))
    return out / "pipe"


# `dice ceiling` settings small enough for a tiny pipeline on a CPU (tests/test_ceiling*.py)
TINY_CEILING = dict(
    steps=8,
    lr=0.05,
    draws=2,
    pool=1,
    eval_draws=4,
    teacher_steps=2,
    num_inference_steps=2,
    prompts_per_batch=2,
    checkpoint_every=2,
    progress=False,
)


def interrupt_ceiling(monkeypatch, run, at_call: int = 5) -> None:
    """``run()`` with the ceiling's training loss raising KeyboardInterrupt at its ``at_call``-th call (with
    TINY_CEILING: mid-way through the first batch, after the checkpoint of step 4); the loss restored after."""
    import pytest

    from dicecfg.training import ceiling as ceiling_module

    real, calls = ceiling_module._Batch.loss, {"n": 0}

    def flaky(self, *args, **kwargs):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == at_call:
                raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ceiling_module._Batch, "loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(ceiling_module._Batch, "loss", real)


def bench_script(relpath: str):
    """A benchmark script of this repository (``benchmarks/<relpath>``) imported as a module, for its functions."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
