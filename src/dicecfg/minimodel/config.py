"""Every option of the mini model's training stages (one ``--flag`` each in ``python -m dicecfg.minimodel.train``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MiniTrainConfig:
    out: str  # run directory (scratch data, checkpoints, final pipeline/)
    device: str = "auto"  # "auto" = cuda if available
    seed: int = 0  # base seed of every stage
    preset: str = "default"  # model sizes, a key of model.PRESETS
    progress: bool = True  # tqdm progress bars
    max_minutes: float = 8.5  # each command checkpoints and stops before this wall time
    ckpt_every: int = 1000  # checkpoint period (steps)
    # data
    n_images: int = 300_000  # training renders
    shard_size: int = 25_000  # renders per .npy shard (data stage resumes per shard)
    n_eval: int = 1024  # held-out renders for the VAE's PSNR
    workers: int = 0  # render processes (0 = all CPUs)
    # text encoder, pre-trained to parse captions (minimodel/text.py), then frozen
    text_captions: int = 200_000  # training captions (drawn afresh; never held-out combinations)
    text_steps: int = 3000
    text_batch: int = 256
    text_lr: float = 5e-4
    relation_margin: float = 0.3  # least relative L2 change of the tail states when a relation is reversed
    # vae
    vae_steps: int = 8000
    vae_batch: int = 256
    vae_lr: float = 1e-3
    vae_from: str = ""  # a trained AutoencoderKL folder to reuse instead of training one
    kl_weight: float = 1e-6  # weight of the KL term (keeps latents near N(0, s^2))
    edge_weight: float = 0.5  # L1 on image gradients: sharp edges without a GAN
    # unet (the pre-trained text encoder frozen)
    unet_steps: int = 100_000  # upper bound; --max-minutes usually stops first
    unet_batch: int = 512
    unet_lr: float = 4e-4
    warmup: int = 500
    caption_dropout: float = 0.1  # share of captions replaced by "" (the unconditional embedding)
    snr_gamma: float = 5.0  # min-SNR loss weighting (0 = plain epsilon MSE)
    ema_decay: float = 0.9995
    # eval
    eval_n: int = 64  # held-out prompts in quick_eval
    eval_steps: int = 20
    eval_guidance: float = 5.0
