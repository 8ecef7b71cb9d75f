"""Stable Diffusion XL: two CLIP text encoders, a pooled embedding and size/crop time ids.

What DICE edits: the two encoders' token states concatenated along the width (77 x (768 + 1280) = 77 x 2048),
one sharpener, token 0 (<SOS>) copied back (docs/method.md, "Per family"). What passes through unchanged: the
pooled embedding of the second encoder (``Cond.extras["pooled"]``) and the size/crop time ids, which the
stock pipeline builds from ``height``/``width``/``original_size``/``crops_coords_top_left`` as usual.

c_neg is always the *encoding* of "" (or of the negative prompt). The pipeline's
``force_zeros_for_empty_prompt`` would give zeros instead, but only when it builds the unconditional branch
itself; we encode "" as an ordinary prompt (``do_classifier_free_guidance=False``) and always hand the
pipeline explicit negative embeddings, so the flag is never read and never changed.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Cond, Family, register


@register
class StableDiffusionXLFamily(Family):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)

    def dim(self, pipe: Any) -> int:
        return pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size

    def num_tokens(self, pipe: Any) -> int:
        return pipe.tokenizer_2.model_max_length

    @torch.no_grad()
    def encode(self, pipe: Any, texts: list[str]) -> Cond:
        embeds, _, pooled, _ = pipe.encode_prompt(
            list(texts),
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return Cond(embeds, {"pooled": pooled})

    def pipeline_kwargs(self, pipe: Any, cond: Cond, neg: Cond | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.extras["pooled"]}
        if neg is not None:
            neg = neg.expand(len(cond))
            kwargs["negative_prompt_embeds"] = neg.embeds
            kwargs["negative_pooled_prompt_embeds"] = neg.extras["pooled"]
        return kwargs

    def time_ids(self, pipe: Any, x_t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(original size, crop top-left, target size) as the pipeline's defaults: (H, W, 0, 0, H, W) pixels."""
        h, w = (int(s) * pipe.vae_scale_factor for s in x_t.shape[-2:])
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=x_t.device)
        return ids.expand(x_t.shape[0], -1)

    def denoise(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        unet = pipe.unet
        added = {
            "text_embeds": cond.extras["pooled"].to(unet.dtype),
            "time_ids": self.time_ids(pipe, x_t, unet.dtype),
        }
        return unet(
            x_t.to(unet.dtype), t, encoder_hidden_states=cond.embeds.to(unet.dtype), added_cond_kwargs=added
        ).sample
