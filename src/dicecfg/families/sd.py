"""Stable Diffusion 1.x / 2.x (epsilon or v-prediction), their fine-tunes, and the shipped mini model."""

from __future__ import annotations

from typing import Any

import torch

from .base import Cond, Family, register


@register
class StableDiffusionFamily(Family):
    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)

    def dim(self, pipe: Any) -> int:
        return pipe.text_encoder.config.hidden_size

    def num_tokens(self, pipe: Any) -> int:
        return pipe.tokenizer.model_max_length

    @torch.no_grad()
    def encode(self, pipe: Any, texts: list[str]) -> Cond:
        embeds, _ = pipe.encode_prompt(
            list(texts),
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return Cond(embeds)

    def pipeline_kwargs(self, pipe: Any, cond: Cond, neg: Cond | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"prompt_embeds": cond.embeds}
        if neg is not None:
            kwargs["negative_prompt_embeds"] = neg.expand(len(cond)).embeds
        return kwargs

    def denoise(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        unet = pipe.unet
        return unet(x_t.to(unet.dtype), t, encoder_hidden_states=cond.embeds.to(unet.dtype)).sample
