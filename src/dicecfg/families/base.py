"""The family interface and registry."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from ..errors import SharpenerMismatchError, UnsupportedPipelineError


@dataclass
class Cond:
    """A batch of text conditioning: ``embeds`` (B, N, d), the token embeddings, is what the sharpener edits;
    ``extras`` holds the family's other conditioning (pooled embeddings, attention masks), passed through
    unchanged."""

    embeds: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def with_embeds(self, embeds: torch.Tensor) -> Cond:
        return replace(self, embeds=embeds)

    def index(self, idx: torch.Tensor | slice | list[int]) -> Cond:
        return Cond(self.embeds[idx], {k: v[idx] for k, v in self.extras.items()})

    def expand(self, n: int) -> Cond:
        """Broadcast a batch-1 Cond to batch n (no copy)."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot broadcast a batch of {len(self)} to {n}")
        return Cond(
            self.embeds.expand(n, *self.embeds.shape[1:]),
            {k: v.expand(n, *v.shape[1:]) for k, v in self.extras.items()},
        )

    @staticmethod
    def where(rows: torch.Tensor, a: Cond, b: Cond) -> Cond:
        """Row i of ``a`` where ``rows[i]``, else of ``b`` (same shapes)."""

        def pick(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.where(rows.to(x.device).view(-1, *[1] * (x.dim() - 1)), x, y)

        return Cond(pick(a.embeds, b.embeds), {k: pick(v, b.extras[k]) for k, v in a.extras.items()})

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        keys = conds[0].extras.keys()
        return Cond(
            torch.cat([c.embeds for c in conds]), {k: torch.cat([c.extras[k] for c in conds]) for k in keys}
        )


class Family(abc.ABC):
    """One model family (SD1.x/2.x, SDXL, PixArt). Subclasses implement the abstract methods; a family that
    misses one cannot be instantiated (``register`` instantiates it at import, so it fails there)."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    copy_first_token: ClassVar[bool] = True

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return any(k.__name__ in cls.pipeline_classes for k in type(pipe).__mro__)

    # -- shapes -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def dim(self, pipe: Any) -> int: ...

    @abc.abstractmethod
    def num_tokens(self, pipe: Any) -> int: ...

    # -- text side ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, pipe: Any, texts: list[str]) -> Cond:
        """Encode prompts exactly as the pipeline itself would (no CFG duplication)."""
        ...

    def key_mask(self, cond: Cond) -> torch.Tensor | None:
        """Valid positions of ``cond`` as sharpener keys (None: all valid)."""
        return None

    def edited(self, cond: Cond, embeds: torch.Tensor, mask_mode: str = "keep") -> Cond:
        """The conditioning that carries the sharpened token embeddings c' (the family's other conditioning kept).

        ``mask_mode`` comes from the sharpener's config, so training and sampling treat masks alike; only
        families with an attention mask over padding (PixArt) use it.
        """
        return cond.with_embeds(embeds)

    @abc.abstractmethod
    def pipeline_kwargs(self, pipe: Any, cond: Cond, neg: Cond | None = None) -> dict[str, Any]:
        """Keyword arguments for the stock pipeline's ``__call__`` (embeddings instead of prompts)."""
        ...

    def denoiser_inputs(self, cond: Cond) -> dict[str, torch.Tensor]:
        """The denoiser's keyword arguments that carry ``cond``'s tokens (and mask), as the stock pipeline
        passes them: what a step-interval method swaps (``sampling/steps.py``)."""
        return {"encoder_hidden_states": cond.embeds}

    # -- denoiser side (training) -------------------------------------------------------------------
    @abc.abstractmethod
    def denoise(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The denoiser's raw output (epsilon or v, whatever the model predicts)."""
        ...

    def encode_images(self, pipe: Any, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> scaled latents the denoiser works on."""
        vae = pipe.vae
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    def default_size(self, pipe: Any) -> int:
        return pipe.unet.config.sample_size * pipe.vae_scale_factor

    def latent_channels(self, pipe: Any) -> int:
        return pipe.unet.config.in_channels

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        return pipe.unet


FAMILIES: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    FAMILIES[cls.name] = cls()
    return cls


def family_of(pipe: Any) -> Family:
    """Detect the family of a diffusers pipeline object."""
    for fam in FAMILIES.values():
        if fam.matches(pipe):
            return fam
    supported = ", ".join(c for f in FAMILIES.values() for c in f.pipeline_classes)
    raise UnsupportedPipelineError(
        f"dicecfg does not support {type(pipe).__name__}. Supported pipelines: {supported}."
    )


def check_compatible(pipe: Any, sharpener: Any) -> Family:
    """Refuse a sharpener trained for another family, width or sequence length, naming both sides."""
    fam = family_of(pipe)
    cfg = sharpener.config
    if cfg["family"] != fam.name:
        raise SharpenerMismatchError(
            f"This sharpener was trained for the '{cfg['family']}' family but the pipeline is "
            f"'{fam.name}' ({type(pipe).__name__}). Train one for this model with `dice train`."
        )
    dim = fam.dim(pipe)
    if cfg["dim"] != dim:
        raise SharpenerMismatchError(
            f"Sharpener dim {cfg['dim']} does not match the pipeline's text embedding dim {dim} "
            f"(base model of the sharpener: {cfg.get('base_model')}). Use a sharpener trained for this model."
        )
    n = fam.num_tokens(pipe)
    if cfg.get("num_tokens") not in (None, n):
        raise SharpenerMismatchError(
            f"Sharpener was trained on {cfg['num_tokens']} tokens but the pipeline encodes {n} tokens."
        )
    return fam
