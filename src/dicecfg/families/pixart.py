"""PixArt-alpha: T5 token states (120 x 4096) with an attention mask over padding, a DiT denoiser.

What DICE edits: the T5 states, every position (T5 has no <SOS> token whose state is the same for every
prompt: position 0 is the first word, so ``copy_first_token`` is False). What passes through: the prompt's
attention mask (see ``mask_mode``) and the resolution / aspect-ratio micro-conditioning, which the stock
pipeline builds from ``height``/``width`` itself; training builds the same from the latent size.

``mask_mode`` (recorded in the sharpener's config, so training and sampling agree; docs/families.md):
- ``keep`` (default): c' uses the prompt's own mask; edits written into padding stay invisible to the
  transformer. alpha=0 (and an untrained sharpener) is exactly unguided sampling.
- ``open``: the mask handed to the transformer is opened over all positions, so the edit written into
  padding reaches it. The transformer then also sees the T5 padding states, so even alpha=0 differs from
  unguided sampling.

The sharpener's keys are all positions of c_neg in both modes (``key_mask`` is None): with the mask, the
empty prompt would leave a single key (</s>), and attention over one key gives the same edit at every
position whatever the prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import Cond, Family, register

MASK_MODES = ("keep", "open")
MAX_SEQUENCE_LENGTH = 120  # the pipeline's default (PixArt-alpha was trained on 120 T5 tokens)


def check_mask_mode(mode: str) -> str:
    if mode not in MASK_MODES:
        raise InputError(f"mask_mode must be one of {', '.join(MASK_MODES)} (got {mode!r}).")
    return mode


def _clean_caption_available() -> bool:
    """The pipeline's ``clean_caption=True`` default silently falls back to False without bs4 and ftfy."""
    from diffusers.utils import is_bs4_available, is_ftfy_available

    return is_bs4_available() and is_ftfy_available()


@register
class PixArtAlphaFamily(Family):
    name = "pixart"
    pipeline_classes = ("PixArtAlphaPipeline",)
    copy_first_token = False

    def dim(self, pipe: Any) -> int:
        return pipe.text_encoder.config.d_model

    def num_tokens(self, pipe: Any) -> int:
        return MAX_SEQUENCE_LENGTH

    @torch.no_grad()
    def encode(self, pipe: Any, texts: list[str]) -> Cond:
        embeds, mask, _, _ = pipe.encode_prompt(
            list(texts),
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=pipe._execution_device,
            clean_caption=_clean_caption_available(),
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        return Cond(embeds, {"attention_mask": mask})

    def edited(self, cond: Cond, embeds: torch.Tensor, mask_mode: str = "keep") -> Cond:
        if check_mask_mode(mask_mode) == "keep":
            return cond.with_embeds(embeds)
        return Cond(embeds, {**cond.extras, "attention_mask": torch.ones_like(cond.extras["attention_mask"])})

    def pipeline_kwargs(self, pipe: Any, cond: Cond, neg: Cond | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt_embeds": cond.embeds,
            "prompt_attention_mask": cond.extras["attention_mask"],
        }
        if neg is not None:
            neg = neg.expand(len(cond))
            kwargs["negative_prompt_embeds"] = neg.embeds
            kwargs["negative_prompt_attention_mask"] = neg.extras["attention_mask"]
            kwargs["negative_prompt"] = None  # the pipeline's default "" may not be passed with embeddings
        return kwargs

    def denoiser_inputs(self, cond: Cond) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": cond.embeds, "encoder_attention_mask": cond.extras["attention_mask"]}

    def added_cond(self, pipe: Any, x_t: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
        """Resolution / aspect-ratio conditioning as the pipeline builds it (only 1024-px models use it)."""
        if not pipe.transformer.use_additional_conditions:
            return {"resolution": None, "aspect_ratio": None}
        h, w = (int(s) * pipe.vae_scale_factor for s in x_t.shape[-2:])
        n = x_t.shape[0]
        return {
            "resolution": torch.tensor([[h, w]], dtype=dtype, device=x_t.device).expand(n, -1),
            "aspect_ratio": torch.tensor([[h / w]], dtype=dtype, device=x_t.device).expand(n, -1),
        }

    def denoise(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        tr = pipe.transformer
        out = tr(
            x_t.to(tr.dtype),
            encoder_hidden_states=cond.embeds.to(tr.dtype),
            encoder_attention_mask=cond.extras["attention_mask"],
            timestep=t,
            added_cond_kwargs=self.added_cond(pipe, x_t, tr.dtype),
        ).sample
        if (
            tr.config.out_channels // 2 == x_t.shape[1]
        ):  # learned sigma: keep the epsilon half, as the pipeline does
            out = out.chunk(2, dim=1)[0]
        return out

    def default_size(self, pipe: Any) -> int:
        return pipe.transformer.config.sample_size * pipe.vae_scale_factor

    def latent_channels(self, pipe: Any) -> int:
        return pipe.transformer.config.in_channels

    def denoiser(self, pipe: Any) -> torch.nn.Module:
        return pipe.transformer
