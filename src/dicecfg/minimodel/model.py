"""The mini model: a real diffusers ``StableDiffusionPipeline`` sized for the shapes world.

Components are stock diffusers / transformers classes built from small configs:
a ``CLIPTokenizer`` whose BPE merges make every grammar word one token, a small ``CLIPTextModel``
(pre-trained from scratch to parse captions, then frozen: ``minimodel.text``), a 64x64x3 -> 16x16x4 ``AutoencoderKL``,
a small ``UNet2DConditionModel`` and a ``DPMSolverMultistepScheduler`` with SD1.5's betas.
Training lives in :mod:`dicecfg.minimodel.train`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..world.worlds import WORLD_FILE

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
EOW = "</w>"
WEIGHT_FILE_LIMIT = 16 * 2**20  # bytes, per weight file
WEIGHT_TOTAL_LIMIT = 25 * 2**20  # bytes, all weights of one mini model
PACKAGE_WEIGHT_LIMIT = 40 * 2**20  # bytes, every weight file the package ships (both models, sharpeners)


# ---------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to one printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one pre-token: repeatedly merge the lowest-ranked adjacent pair."""
    parts = list(word[:-1]) + [word[-1] + EOW]
    while len(parts) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(parts, parts[1:], strict=False))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def grammar_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges that make each word a single ``word</w>`` token.

    New merges are appended (lowest priority), so a word that already collapses to one token is never
    affected by merges added for later words.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words)):
        while len(parts := _bpe(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(merges)
            merges.append((parts[0], parts[1]))
    return merges


def _pieces(vocab: Iterable[str]) -> list[str]:
    """Split vocabulary entries the way CLIP's pre-tokenizer does (letter runs; punctuation runs)."""
    return [p for w in vocab for p in re.findall(r"[^\W\d_]+|\d|[^\s\w]+", w.lower())]


def build_tokenizer(vocab: Iterable[str], out_dir: str | Path) -> CLIPTokenizer:
    """Write ``vocab.json`` + ``merges.txt`` for a CLIP BPE where every word of ``vocab`` is one token.

    The byte-level base alphabet (with and without ``</w>``) is kept, so any text still tokenizes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = grammar_merges(_pieces(vocab))
    tokens = alphabet + [c + EOW for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    ids = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (out_dir / "vocab.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (out_dir / "merges.txt").write_text(text, encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=ids, merges=merges, pad_token=EOS, model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(out_dir)  # adds tokenizer_config.json (model_max_length, special tokens)
    return tokenizer


def write_bpe_files(tokenizer: CLIPTokenizer, out_dir: str | Path) -> None:
    """Write ``vocab.json`` + ``merges.txt`` next to ``tokenizer.json`` (older transformers read only these)."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (Path(out_dir) / "vocab.json").write_text(
        json.dumps(tokenizer.get_vocab(), ensure_ascii=False), encoding="utf-8"
    )
    (Path(out_dir) / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
    )


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids exactly as ``StableDiffusionPipeline.encode_prompt`` makes them (pad to 77)."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


# ---------------------------------------------------------------- component configs
@dataclass(frozen=True)
class MiniConfig:
    """Sizes of the mini model. ``PRESETS['default']`` is the shipped one; ``'tiny'`` is for tests."""

    text_hidden: int = 256  # CLIPTextModel width = UNet cross_attention_dim
    text_layers: int = 4
    text_heads: int = 4
    text_ffn: int = 1024
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks: 64x64 -> 16x16
    vae_layers: int = 1
    vae_groups: int = 32
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 96, 128)  # 16x16, 8x8, 4x4 (cross-attention at 16 and 8)
    unet_layers: int = 2
    unet_head_dim: int = 32  # heads per block = channels / head_dim
    unet_groups: int = 32


PRESETS = {
    "default": MiniConfig(),
    # the shapes-fine model: within the package's budget beside the first (a shallower text encoder with a
    # narrower FFN, one layer per UNet block)
    "fine": MiniConfig(text_layers=3, text_ffn=512, unet_layers=1),
    "tiny": MiniConfig(
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        text_ffn=64,
        vae_channels=(8, 16, 16),
        vae_groups=4,
        unet_channels=(16, 32, 32),
        unet_layers=1,
        unet_head_dim=8,
        unet_groups=4,
    ),
}


def make_text_encoder(cfg: MiniConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_ffn,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=cfg.text_hidden,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_vae(cfg: MiniConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=cfg.vae_layers,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_groups,
        sample_size=64,
    )


def make_unet(cfg: MiniConfig) -> UNet2DConditionModel:
    n = len(cfg.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers,
        norm_num_groups=cfg.unet_groups,
        cross_attention_dim=cfg.text_hidden,
        # diffusers' (historical) name: this is the number of heads per block
        attention_head_dim=tuple(c // cfg.unet_head_dim for c in cfg.unet_channels),
    )


def make_scheduler() -> DPMSolverMultistepScheduler:
    """DPM-Solver++(2M) with SD1.5's training betas (scaled_linear 0.00085..0.012, 1000 steps)."""
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="leading",
        steps_offset=1,
    )


def config_dict(cfg: MiniConfig) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> MiniConfig:
    return MiniConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ---------------------------------------------------------------- pipeline and budget
def assemble_pipeline(text_encoder, tokenizer, unet, vae, scheduler) -> StableDiffusionPipeline:
    """A stock ``StableDiffusionPipeline`` over the mini components (no safety checker)."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(
    pipe: StableDiffusionPipeline, out_dir: str | Path, dtype=torch.float16, world: str = "shapes"
) -> Path:
    """Save with weights stored in ``dtype`` (fp16 keeps the budget); loads in fp32 via ``torch_dtype``.
    ``WORLD_FILE`` records the world it was trained on."""
    pipe.to(dtype=dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    write_bpe_files(pipe.tokenizer, Path(out_dir) / "tokenizer")
    (Path(out_dir) / WORLD_FILE).write_text(json.dumps({"world": world}) + "\n", encoding="utf-8")
    check_budget(out_dir)
    return Path(out_dir)


def weight_bytes(modules: dict[str, torch.nn.Module], bytes_per_param: int = 2) -> dict[str, int]:
    """Bytes each module's weights take when stored with ``bytes_per_param``."""
    return {k: sum(p.numel() for p in m.state_dict().values()) * bytes_per_param for k, m in modules.items()}


def check_budget(folder: str | Path) -> dict[str, int]:
    """Sizes of the weight files in a pipeline folder; raises if the budget is broken."""
    sizes = {
        str(p.relative_to(folder)): p.stat().st_size for p in sorted(Path(folder).rglob("*.safetensors"))
    }
    big = {k: v for k, v in sizes.items() if v > WEIGHT_FILE_LIMIT}
    if big or sum(sizes.values()) > WEIGHT_TOTAL_LIMIT:
        raise ValueError(f"mini-model weight budget broken: {sizes} (total {sum(sizes.values())} B)")
    return sizes
