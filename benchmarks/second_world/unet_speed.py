"""How fast the mini model's UNet step runs, and what bounds it: batch size, the text encoder, torch.compile.

The step is the UNet stage's own (`train.unet_loss`: min-SNR epsilon loss under bf16 autocast; `loop.optimizer_step`:
AdamW, clipping, the weight EMA) on random latents and random caption states of the preset's shapes, so it needs no
run folder; the text encoder's own
forward is timed apart on token rows of the pipeline's tokenizer length. One JSON row per variant:

    python benchmarks/second_world/unet_speed.py --preset fine --json speed.json            # GPU machine
    python benchmarks/second_world/unet_speed.py --preset tiny --device cpu --steps 2       # a smoke run

`--best` prints the batch size and compile flag with the most samples per second (gpu_once.sh reads them from the
JSON, which is rewritten after every variant, and passes them on to the UNet stage); a variant that fails (e.g.
compile) is recorded with its error and skipped.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dicecfg.minimodel import model as mm


def _step_fn(unet, batch: int, device: torch.device, compiled: bool):
    """The UNet stage's step (`train.unet_loss`, then `loop.optimizer_step`) on random latent posteriors and
    random caption states (4,096 captions) of the preset's shapes."""
    from diffusers import DDPMScheduler

    from dicecfg.minimodel.loop import optimizer_step
    from dicecfg.minimodel.train import MiniTrainConfig, unet_loss

    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, betas=(0.9, 0.99))
    ema = [p.detach().clone().float() for p in params]
    forward = torch.compile(unet) if compiled else unet
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    size, ch = unet.config.sample_size, unet.config.in_channels
    states = torch.bfloat16 if device.type == "cuda" else torch.float32
    table = torch.randn(4096, 77, unet.config.cross_attention_dim, device=device).to(states)
    lat = {k: torch.randn(8192, ch, size, size, device=device).half() for k in ("mean", "std")}
    cap_idx = torch.randint(1, len(table), (len(lat["mean"]),), device=device)
    ac = DDPMScheduler.from_config(mm.make_scheduler().config).alphas_cumprod.to(device)
    cfg = MiniTrainConfig(out="", unet_batch=batch)
    loss_fn = unet_loss(forward, lambda rows: table[rows], lat, 1.0, ac, cap_idx, 0, cfg, amp)
    g = torch.Generator(device=device).manual_seed(0)

    def step() -> torch.Tensor:
        loss = loss_fn(g)
        optimizer_step(loss, opt, params, 1.0, ema, 0.999)
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(preset: str, batch: int, device: torch.device, compiled: bool, warm: int, steps: int) -> dict:
    torch.manual_seed(0)
    unet = mm.make_unet(mm.PRESETS[preset]).to(device).train()
    step = _step_fn(unet, batch, device, compiled)
    t = time.perf_counter()
    for _ in range(warm):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    s = (time.perf_counter() - t) / steps
    return {"batch": batch, "compile": compiled, "step_ms": 1e3 * s, "it_s": 1 / s, "samples_s": batch / s,
            "warmup_s": warm_s}


def time_text(preset: str, batch: int, device: torch.device, steps: int) -> dict:
    """The frozen text encoder's forward on `batch` caption rows: what each UNet step paid before the cache."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = mm.PRESETS[preset]
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=600, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_ffn,
                                       num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                                       max_position_embeddings=77, bos_token_id=0, eos_token_id=1)).to(device).eval()
    ids = torch.randint(0, 600, (batch, 77), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), amp:
        for _ in range(3):
            enc(ids)
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            enc(ids)
        _sync(device)
    return {"text_encoder_batch": batch, "text_ms": 1e3 * (time.perf_counter() - t) / steps}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="fine", choices=sorted(mm.PRESETS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--compile-batches", type=int, nargs="*", default=[1024], help="batches also timed compiled")
    p.add_argument("--warm", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", default="", help="write the rows here")
    p.add_argument("--best", action="store_true", help="print 'BATCH COMPILE' of the fastest variant last")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows: list[dict] = [{"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                         "torch": torch.__version__, "preset": a.preset}]
    rows.append(time_text(a.preset, a.batches[0], device, a.steps))
    plan = [(b, False) for b in a.batches] + [(b, True) for b in a.compile_batches]
    for batch, compiled in plan:
        try:
            row = time_step(a.preset, batch, device, compiled, a.warm, a.steps)
        except Exception as e:  # noqa: BLE001 - a variant that cannot run is recorded, not fatal
            row = {"batch": batch, "compile": compiled, "error": f"{type(e).__name__}: {e}"[:300]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)
    print(json.dumps(rows[1]))
    if a.best:
        print(*best(rows))
    return rows


def best(rows: list[dict]) -> tuple[int, int]:
    """(batch, compile as 0/1) of the row with the most samples per second; (512, 0) when none ran."""
    ok = [r for r in rows if "samples_s" in r]
    top = max(ok, key=lambda r: r["samples_s"]) if ok else {"batch": 512, "compile": False}
    return top["batch"], int(top["compile"])


if __name__ == "__main__":
    main()
