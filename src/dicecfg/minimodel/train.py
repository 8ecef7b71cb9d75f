"""Train the mini model in resumable stages: ``data -> text -> vae -> unet -> assemble -> eval``.

    python -m dicecfg.minimodel.train STAGE --out DIR [--device cuda] [--max-minutes 8] ...

Each stage is one function taking a :class:`MiniTrainConfig`; re-running a stage with the same ``--out``
resumes it. ``DIR`` gets ``run_<stage>.json`` (resolved config, versions, commit), ``stats.jsonl`` (the shared
run-folder format of ``runs.folder``) and, at the end,
``pipeline/``: the StableDiffusionPipeline folder that is shipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dicecfg.flags import Checked, add_flags, from_flags, opt
from dicecfg.minimodel import model as mm
from dicecfg.minimodel.data import encode_latents, load_data, render_shards, to_float
from dicecfg.minimodel.loop import CKPT, LoopConfig, final_weights, train
from dicecfg.minimodel.report import quick_eval, write_model_card
from dicecfg.pipeline import resolve_device
from dicecfg.runs.folder import append_stats, read_checkpoint, run_record
from dicecfg.runs.io import atomic_write_json

log = logging.getLogger(__name__)
STAGES = ("data", "text", "vae", "unet", "assemble", "eval")


@dataclass(frozen=True)
class MiniTrainConfig(Checked):
    """Every option of the stages (one ``--flag`` each in ``python -m dicecfg.minimodel.train``)."""

    out: str = opt(help="run directory (scratch data, checkpoints, final pipeline/)")
    device: str = opt("auto", '"auto" = cuda if available')
    seed: int = opt(0, "base seed of every stage")
    world: str = opt("shapes", "the world to train on: shapes or shapes-fine (dicecfg.world.worlds)")
    preset: str = opt("default", "model sizes, a key of model.PRESETS (shapes-fine ships with 'fine')")
    progress: bool = opt(True, "tqdm progress bars")
    max_minutes: float = opt(8.5, "each command checkpoints and stops before this wall time")
    ckpt_every: int = opt(1000, "checkpoint period (steps)")
    # data
    n_images: int = opt(300_000, "training renders")
    shard_size: int = opt(25_000, "renders per .npy shard (data stage resumes per shard)")
    n_eval: int = opt(1024, "held-out renders for the VAE's PSNR")
    workers: int = opt(0, "render processes (0 = all CPUs)")
    # text encoder, pre-trained to parse captions (minimodel/text.py), then frozen
    text_captions: int = opt(200_000, "training captions (drawn afresh; never held-out combinations)")
    text_steps: int = opt(3000, "text encoder pre-training steps")
    text_batch: int = opt(256, "captions per text encoder step")
    text_lr: float = opt(5e-4, "text encoder AdamW peak learning rate")
    text_from: str = opt(
        "", "a mini-model pipeline folder whose tokenizer and text encoder to reuse (no training)"
    )
    relation_margin: float = opt(
        0.3, "least relative L2 change of the tail states when a relation is reversed"
    )
    # vae
    vae_steps: int = opt(8000, "VAE training steps")
    vae_batch: int = opt(256, "images per VAE step")
    vae_lr: float = opt(1e-3, "VAE AdamW peak learning rate")
    vae_from: str = opt("", "a trained AutoencoderKL folder to reuse instead of training one")
    vae_init: str = opt("", "a trained AutoencoderKL folder to start from, then trained --vae-steps more")
    kl_weight: float = opt(1e-6, "weight of the KL term (keeps latents near N(0, s^2))")
    edge_weight: float = opt(0.5, "L1 on image gradients: sharp edges without a GAN")
    # unet (the pre-trained text encoder frozen)
    unet_steps: int = opt(100_000, "UNet training steps: an upper bound; --max-minutes usually stops first")
    unet_batch: int = opt(512, "latents per UNet step")
    unet_lr: float = opt(4e-4, "UNet AdamW peak learning rate")
    unet_compile: bool = opt(False, "torch.compile the UNet's forward (benchmarks/second_world/unet_speed.py measures whether it pays)")
    text_cache_gb: float = opt(
        16.0, "encode every distinct caption once if their states fit in this many GB (else every step)"
    )
    unet_init: str = opt(
        "", "a mini-model pipeline folder whose UNet to start from (a fresh optimizer; same sizes)"
    )
    warmup: int = opt(500, "linear learning-rate warm-up steps of the text encoder and the UNet")
    caption_dropout: float = opt(0.1, 'share of captions replaced by "" (the unconditional embedding)')
    snr_gamma: float = opt(5.0, "min-SNR loss weighting (0 = plain epsilon MSE)")
    ema_decay: float = opt(0.9995, "decay of the UNet's weight EMA (the shipped weights)")
    # eval
    eval_n: int = opt(64, "held-out prompts in quick_eval")
    eval_steps: int = opt(20, "sampling steps in quick_eval")
    eval_guidance: float = opt(5.0, "CFG scale w in quick_eval")


def _device(cfg: MiniTrainConfig) -> torch.device:
    return torch.device(resolve_device(cfg.device))


def _start(cfg: MiniTrainConfig, stage: str) -> tuple[Path, torch.device, float]:
    """Create the run dir, write run_<stage>.json, return (out, device, deadline)."""
    out, device = Path(cfg.out), _device(cfg)
    out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    atomic_write_json(out / f"run_{stage}.json", {**run_record(cfg), "stage": stage, "card": card})
    append_stats(out, {"stage": stage, "event": "start", "card": card, "time": time.time()})
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # a stage's shapes are fixed: pick each convolution's kernel once
    torch.manual_seed(cfg.seed)  # initial weights; per-step randomness is re-seeded by the loop
    return out, device, time.monotonic() + 60 * cfg.max_minutes


def _loop(cfg: MiniTrainConfig, deadline: float, steps: int, lr: float, **kw) -> LoopConfig:
    """A stage's LoopConfig: its steps, LR and extras, plus the run-wide checkpointing, deadline, seed, bar."""
    return LoopConfig(
        steps, lr, ckpt_every=cfg.ckpt_every, deadline=deadline, seed=cfg.seed, progress=cfg.progress, **kw
    )


# ---------------------------------------------------------------- data
def stage_data(cfg: MiniTrainConfig) -> Path:
    """Render the training set in shards (``data/images_KKK.npy`` + captions JSON) and an eval set."""
    out, _, deadline = _start(cfg, "data")
    workers = cfg.workers or os.cpu_count() or 1
    for row in render_shards(
        out / "data", cfg.n_images, cfg.shard_size, cfg.n_eval, cfg.seed, workers, deadline, cfg.world
    ):
        append_stats(out, {"stage": "data", **row})
    return out / "data"


# ---------------------------------------------------------------- text encoder
def stage_text(cfg: MiniTrainConfig) -> Path:
    """Pre-train the CLIPTextModel to parse captions into the canonical scene code (``minimodel.text``)."""
    from dicecfg.minimodel import text as mt
    from dicecfg.world.data import sample_training_scenes
    from dicecfg.world.worlds import get_world

    out, device, deadline = _start(cfg, "text")
    if cfg.text_from:
        return _reuse_text(cfg, out)
    tokenizer = mm.build_tokenizer(get_world(cfg.world).vocab, out / "tokenizer")
    code = mt.CODES[cfg.world]
    captions = sample_training_scenes(cfg.text_captions, cfg.seed + 1, world=cfg.world)[1]
    data = mt.pretraining_data(tokenizer, captions, device, code)
    mcfg = mm.PRESETS[cfg.preset]
    text_encoder = mm.make_text_encoder(mcfg, tokenizer).to(device)
    head = mt.ParseHead(mcfg.text_hidden, code).to(device)
    loss_fn = mt.pretraining_loss(text_encoder, head, data, cfg, tokenizer.eos_token_id)
    loop = _loop(cfg, deadline, cfg.text_steps, cfg.text_lr, warmup=cfg.warmup, weight_decay=0.01)
    modules = {"text_encoder": text_encoder, "head": head}
    meta = train(out / "text", out, "text", modules, loss_fn, loop, device, {"model": mm.config_dict(mcfg)})
    if not meta["finished"]:
        return out / "text"
    text_encoder.eval()
    exact = mt.heldout_exact(text_encoder, tokenizer, head, device, code=code)
    text_encoder.save_pretrained(out / "text" / "final")
    append_stats(
        out,
        {
            "stage": "text",
            "event": "done",
            "step": meta["step"],
            "elapsed_s": meta["elapsed_s"],
            "loss": meta["loss"],
            "heldout_exact": exact,
        },
    )
    log.info("text: held-out prompts parsed exactly at every tail position: %.4f", exact)
    return out / "text" / "final"


def _reuse_text(cfg: MiniTrainConfig, out: Path) -> Path:
    """Copy a trained pipeline's tokenizer and frozen text encoder (``--text-from``) as this run's."""
    from transformers import CLIPTextModel, CLIPTokenizer

    src = Path(cfg.text_from)
    CLIPTokenizer.from_pretrained(src / "tokenizer").save_pretrained(out / "tokenizer")
    mm.write_bpe_files(CLIPTokenizer.from_pretrained(out / "tokenizer"), out / "tokenizer")
    CLIPTextModel.from_pretrained(src / "text_encoder").float().save_pretrained(out / "text" / "final")
    append_stats(
        out, {"stage": "text", "event": "done", "source": cfg.text_from, "step": None, "elapsed_s": 0.0}
    )
    return out / "text" / "final"


def _pretrained_text_encoder(out: Path):
    from transformers import CLIPTextModel

    path = out / "text" / "final"
    if not path.exists():
        raise FileNotFoundError(f"no pre-trained text encoder at {path}; run the text stage first")
    return CLIPTextModel.from_pretrained(path).float()


# ---------------------------------------------------------------- vae
def _reuse_vae(cfg: MiniTrainConfig, out: Path, device: torch.device) -> Path:
    """Copy a trained AutoencoderKL (``--vae-from``) as this run's VAE; its PSNR is measured again."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(cfg.vae_from).float().to(device).eval()
    psnr = _vae_psnr(vae, out, device)
    vae.save_pretrained(out / "vae" / "final")
    row = {"stage": "vae", "event": "done", "psnr_eval": psnr, "scaling_factor": vae.config.scaling_factor}
    append_stats(out, {**row, "source": cfg.vae_from, "step": None, "elapsed_s": 0.0})
    return out / "vae" / "final"


def _vae_psnr(vae, out: Path, device: torch.device) -> float:
    """Mean PSNR (dB, uint8 pixels) of the VAE's reconstructions of the held-out renders."""
    ev = torch.from_numpy(load_data(out, "eval")[0]).to(device)
    with torch.no_grad():
        rec = torch.cat([vae(to_float(b)).sample for b in ev.split(512)])
    rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round()
    mse = ((rec_u8 - ev.permute(0, 3, 1, 2).float()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(255.0**2 / mse)).mean().item()


def stage_vae(cfg: MiniTrainConfig) -> Path:
    """Train the AutoencoderKL (L1 + L2 + edge L1 + small KL); set scaling_factor = 1/std(latents)."""
    out, device, deadline = _start(cfg, "vae")
    if cfg.vae_from:
        return _reuse_vae(cfg, out, device)
    images = torch.from_numpy(load_data(out)[0]).to(device)
    mcfg = mm.PRESETS[cfg.preset]
    vae = mm.make_vae(mcfg)
    if cfg.vae_init:  # fine-tune a trained VAE (same sizes) rather than start from random weights
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(cfg.vae_init).float().state_dict())
    vae = vae.to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        x = to_float(images[torch.randint(len(images), (cfg.vae_batch,), generator=g, device=device)])
        with amp:
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=g)).sample.float()
        edge = sum(F.l1_loss(rec.diff(dim=d), x.diff(dim=d)) for d in (2, 3))
        kl = post.kl().float().mean() / x[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.edge_weight * edge + cfg.kl_weight * kl

    loop = _loop(cfg, deadline, cfg.vae_steps, cfg.vae_lr)
    meta = train(
        out / "vae", out, "vae", {"vae": vae}, loss_fn, loop, device, {"model": mm.config_dict(mcfg)}
    )
    if not meta["finished"]:
        return out / "vae"
    vae.eval()
    with torch.no_grad():
        gen = torch.Generator(device).manual_seed(cfg.seed)
        sub = images[torch.randint(len(images), (min(8192, len(images)),), generator=gen, device=device)]
        z = torch.cat([vae.encode(to_float(b)).latent_dist.sample(generator=gen) for b in sub.split(512)])
        vae.register_to_config(scaling_factor=float(1.0 / z.float().std()))
    psnr = _vae_psnr(vae, out, device)
    vae.save_pretrained(out / "vae" / "final")
    row = {"stage": "vae", "event": "done", "psnr_eval": psnr, "scaling_factor": vae.config.scaling_factor}
    append_stats(out, {**row, "step": meta["step"], "elapsed_s": meta["elapsed_s"]})
    log.info("vae: held-out PSNR %.2f dB, scaling_factor %.4f", psnr, vae.config.scaling_factor)
    return out / "vae" / "final"


# ---------------------------------------------------------------- unet
def stage_unet(cfg: MiniTrainConfig) -> Path:
    """Train the UNet2DConditionModel (epsilon prediction, caption dropout) on the frozen text encoder."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTokenizer

    out, device, deadline = _start(cfg, "unet")
    vae = AutoencoderKL.from_pretrained(out / "vae" / "final").float()
    vae = vae.to(device).eval().requires_grad_(False)
    lat = encode_latents(out, vae, device)
    scale = vae.config.scaling_factor
    text_encoder = _pretrained_text_encoder(out).to(device).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    captions = load_data(out, images=False)[1]
    unique = sorted(set(captions) | {""})
    ids_unique = mm.tokenize(tokenizer, unique).to(device)
    where = {c: i for i, c in enumerate(unique)}
    cap_idx = torch.tensor([where[c] for c in captions], device=device)
    empty = where[""]
    mcfg = mm.PRESETS[cfg.preset]
    unet = mm.make_unet(mcfg)
    if (
        cfg.unet_init
    ):  # continue from a trained UNet (e.g. a shipped one) when no checkpoint of this run exists
        from diffusers import UNet2DConditionModel

        unet.load_state_dict(
            UNet2DConditionModel.from_pretrained(Path(cfg.unet_init) / "unet").float().state_dict()
        )
    unet = unet.to(device)
    ac = DDPMScheduler.from_config(mm.make_scheduler().config).alphas_cumprod.to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    cached = torch.bfloat16 if amp.fast_dtype == torch.bfloat16 and device.type == "cuda" else torch.float32
    encode = _caption_states(text_encoder, ids_unique, amp, cached, cfg.text_cache_gb)
    forward = torch.compile(unet) if cfg.unet_compile else unet
    loss_fn = unet_loss(forward, encode, lat, scale, ac, cap_idx, empty, cfg, amp)

    loop = _loop(
        cfg,
        deadline,
        cfg.unet_steps,
        cfg.unet_lr,
        warmup=cfg.warmup,
        weight_decay=0.01,
        ema_decay=cfg.ema_decay,
    )
    modules = {"unet": unet}
    meta = train(out / "unet", out, "unet", modules, loss_fn, loop, device, {"model": mm.config_dict(mcfg)})
    append_stats(
        out, {"stage": "unet", "event": "end", **{k: meta[k] for k in ("step", "elapsed_s", "loss")}}
    )
    return out / "unet"


def unet_loss(forward, encode, lat: dict, scale: float, ac: torch.Tensor, cap_idx: torch.Tensor, empty: int,
              cfg: MiniTrainConfig, amp):
    """The UNet stage's loss: ``loss_fn(generator)`` draws a batch of training images (their latent posteriors
    ``lat``), timesteps, noise and caption dropout, and returns the min-SNR-weighted epsilon MSE of ``forward``
    (the UNet, or its compiled form) on the caption states ``encode(rows)``."""
    device = ac.device

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        b = cfg.unet_batch
        idx = torch.randint(len(cap_idx), (b,), generator=g, device=device)
        mean, std = lat["mean"][idx].float(), lat["std"][idx].float()
        z0 = (mean + std * torch.randn(mean.shape, generator=g, device=device)) * scale
        t = torch.randint(0, len(ac), (b,), generator=g, device=device)
        eps = torch.randn(z0.shape, generator=g, device=device)
        a = ac[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps  # DDPM forward process q(z_t | z_0)
        drop = torch.rand(b, generator=g, device=device) < cfg.caption_dropout
        emb = encode(torch.where(drop, empty, cap_idx[idx]))
        with amp:
            pred = forward(zt, t, emb).sample.float()
        mse = ((pred - eps) ** 2).mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:  # min-SNR-gamma weighting for epsilon prediction (Hang et al. 2023)
            snr = a.view(-1) / (1 - a.view(-1))
            mse = mse * snr.clamp(max=cfg.snr_gamma) / snr
        return mse.mean()

    return loss_fn


def _caption_states(text_encoder, ids: torch.Tensor, amp, dtype: torch.dtype, cache_gb: float):
    """``encode(rows)``: the frozen encoder's last hidden states (after its final LN, as
    ``encode_prompt(clip_skip=None)``) of the token rows ``ids[rows]``.

    When the states of every distinct caption fit in ``cache_gb``, they are computed once here and each step
    only gathers them (the encoder is frozen, so the step sees the same states; on a GPU they are kept in
    bfloat16, ``dtype``, the one the UNet's cross-attention projections read them in under autocast).
    Otherwise each step runs the encoder on its batch.
    """
    width = text_encoder.config.hidden_size
    need = len(ids) * ids.shape[1] * width * (2 if dtype == torch.bfloat16 else 4)

    @torch.no_grad()
    def run(rows: torch.Tensor) -> torch.Tensor:
        with amp:
            return text_encoder(ids[rows])[0]

    if need > cache_gb * 1e9:
        log.info("unet: %.1f GB of caption states exceed --text-cache-gb; encoding every step", need / 1e9)
        return run
    rows = torch.arange(len(ids), device=ids.device)
    table = torch.cat([run(r).to(dtype) for r in rows.split(1024)])
    log.info("unet: %d distinct captions encoded once (%.2f GB)", len(ids), need / 1e9)
    return lambda r: table[r]


# ---------------------------------------------------------------- assemble, eval
def stage_assemble(cfg: MiniTrainConfig) -> Path:
    """Write ``pipeline/`` (fp16 weights, EMA if trained with it) and its model card."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    out, _, _ = _start(cfg, "assemble")
    mcfg = mm.config_from_dict(
        read_checkpoint(out / "unet", CKPT)[1]["model"]
    )  # sizes the UNet was trained at
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    text_encoder, unet = _pretrained_text_encoder(out), mm.make_unet(mcfg)
    unet.load_state_dict(final_weights(out / "unet", "unet"))
    vae = AutoencoderKL.from_pretrained(out / "vae" / "final")
    pipe = mm.assemble_pipeline(text_encoder, tokenizer, unet, vae, mm.make_scheduler())
    mm.save_pipeline(pipe, out / "pipeline", world=cfg.world)
    write_model_card(out)
    return out / "pipeline"


def stage_eval(cfg: MiniTrainConfig) -> dict[str, float]:
    """quick_eval on the assembled pipeline; appends to stats.jsonl and refreshes the model card."""
    out, device, _ = _start(cfg, "eval")
    t = time.monotonic()
    res = quick_eval(out / "pipeline", cfg.eval_n, cfg.eval_steps, str(device), cfg.eval_guidance, cfg.world)
    row = {
        "n": cfg.eval_n,
        "steps": cfg.eval_steps,
        "guidance": cfg.eval_guidance,
        "seconds": time.monotonic() - t,
    }
    append_stats(out, {"stage": "eval", "event": "done", **res, **row})
    write_model_card(out)
    return res


def run_stage(stage: str, cfg: MiniTrainConfig):
    return {
        "data": stage_data,
        "text": stage_text,
        "vae": stage_vae,
        "unet": stage_unet,
        "assemble": stage_assemble,
        "eval": stage_eval,
    }[stage](cfg)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the stage, then one option per MiniTrainConfig field (``--max-minutes``, ...)."""
    p = argparse.ArgumentParser(prog="python -m dicecfg.minimodel.train", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=STAGES, help="the stage to run (or resume)")
    add_flags(p, MiniTrainConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.text_cache_gb is not None and ns.text_cache_gb < 0:
        parser.error(f"--text-cache-gb must be >= 0 (0 encodes every step), got {ns.text_cache_gb}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run_stage(ns.stage, from_flags(ns, MiniTrainConfig))
    if isinstance(result, dict):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
