"""Reports on the mini model: quick held-out evaluation (CFG vs unguided) and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dicecfg.evaluation.report import markdown
from dicecfg.minimodel import model as mm
from dicecfg.runs.folder import read_stats
from dicecfg.runs.io import atomic_write_text

EXAMPLE_PROMPTS = {
    "shapes": "a small red circle to the left of a blue square",
    "shapes-fine": "a hollow red circle to the left of a blue square with vertical stripes and two dots",
}
WORLD_BLURBS = {
    "shapes": "one or two coloured shapes, their sizes, a relation, a background",
    "shapes-fine": "the shapes world plus each object's pattern (solid, hollow, horizontal or vertical stripes) "
    "and a count of small dots, attributes settled late in sampling",
}


def _version(run: dict, package: str) -> str:
    """A package version recorded in a stage's run json (runs written before the shared record kept them at
    the top level)."""
    return run.get("versions", run).get(package, "n/a")


def _last(rows: list[dict], stage: str, event: str | None = None) -> dict:
    hits = [r for r in rows if r.get("stage") == stage and (event is None or r.get("event") == event)]
    return hits[-1] if hits else {}


def _fmt(v, spec: str = "") -> str:
    return "n/a" if v is None else format(v, spec)


def write_model_card(out: str | Path) -> Path:
    """Write ``out/pipeline/README.md`` from ``stats.jsonl`` and ``run_*.json``."""
    out = Path(out)
    rows = read_stats(out)
    runs = {
        s: json.loads(p.read_text())
        for s in ("data", "text", "vae", "unet")
        if (p := out / f"run_{s}.json").exists()
    }
    shards = {r["shard"]: r for r in rows if r.get("stage") == "data" and "shard" in r}
    n_train = sum(r["n"] for k, r in shards.items() if k != "eval")
    data_s = sum(r["seconds"] for r in shards.values())
    vae, unet, ev = _last(rows, "vae", "done"), _last(rows, "unet", "end"), _last(rows, "eval", "done")
    text = _last(rows, "text", "done")
    sizes = mm.check_budget(out / "pipeline")
    cards = sorted(
        {r["card"] for r in rows if r.get("event") == "start" and r.get("stage") in ("text", "vae", "unet")}
    )
    wall = data_s + sum(r.get("elapsed_s") or 0 for r in (text, vae, unet))
    cfg = runs.get("unet", {}).get("config", {})
    tcfg = runs.get("text", {}).get("config", {})
    world = cfg.get("world", "shapes")
    prompt = EXAMPLE_PROMPTS[world]
    vae_steps = f"reused from `{vae['source']}`" if vae.get("source") else f"{_fmt(vae.get('step'))} steps"
    text_steps = (
        f"reused from `{tcfg['text_from']}`"
        if tcfg.get("text_from")
        else f"{_fmt(text.get('step'))} / {tcfg.get('text_batch', 'n/a')}"
    )
    unet_from = f" (from the UNet of `{cfg['unet_init']}`)" if cfg.get("unet_init") else ""
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "license: apache-2.0",
        "---",
        f"# dicecfg mini model ({world} world)",
        "",
        "A small `StableDiffusionPipeline` trained from scratch by `dicecfg.minimodel.train` on procedurally",
        f"rendered 64x64 captioned scenes of the {world} world ({WORLD_BLURBS[world]}; docs/world.md).",
        "The text encoder (CLIPTextModel) is pre-trained",
        "to parse captions into a canonical scene code (which colour is where, its shape, size and the rest; see",
        "`dicecfg/minimodel/text.py`), then frozen; the UNet is trained on it with"
        f" {cfg.get('caption_dropout', 'n/a')} caption dropout",
        "to the empty prompt, so classifier-free guidance works with the stock pipeline.",
        "",
    ]
    fields = [
        ("training renders", f"{n_train} ({_fmt(data_s, '.0f')} s to render)"),
        ("text encoder pre-training steps / batch", text_steps),
        ("held-out prompts parsed exactly", _fmt(text.get("heldout_exact"), ".4f")),
        ("VAE / held-out PSNR", f"{vae_steps} / {_fmt(vae.get('psnr_eval'), '.2f')} dB"),
        ("VAE scaling_factor", _fmt(vae.get("scaling_factor"), ".4f")),
        ("UNet steps / batch", f"{_fmt(unet.get('step'))} / {cfg.get('unet_batch', 'n/a')}{unet_from}"),
        ("final training loss", _fmt(unet.get("loss"), ".4f")),
        (
            "caption dropout / lr / EMA",
            f"{cfg.get('caption_dropout', 'n/a')} / {cfg.get('unet_lr', 'n/a')} / {cfg.get('ema_decay', 'n/a')}",
        ),
        ("training wall time (data + text + VAE + UNet)", f"{wall / 60:.1f} min"),
        ("card", ", ".join(cards) or "n/a"),
        (
            "versions",
            f"torch {_version(runs.get('unet', {}), 'torch')}, diffusers {_version(runs.get('unet', {}), 'diffusers')}",
        ),
        ("weights (fp16)", f"{sum(sizes.values())} bytes in {len(sizes)} files"),
    ]
    if ev:
        fields.append(
            (
                f"held-out oracle accuracy ({ev['n']} prompts, {ev['steps']} steps)",
                f"CFG w={ev['guidance']}: {ev['cfg']:.3f}, unguided: {ev['unguided']:.3f} ("
                + ", ".join(
                    f"{k}: {ev[f'cfg_{k}']:.3f} / {ev[f'unguided_{k}']:.3f}"
                    for k in ("relation", "pattern", "dots")
                    if f"cfg_{k}" in ev
                )
                + ")",
            )
        )
    lines.append(markdown(["field", "value"], fields))
    lines += [
        "",
        "```python",
        "import torch",
        "from diffusers import StableDiffusionPipeline",
        "",
        'pipe = StableDiffusionPipeline.from_pretrained("<this folder>", torch_dtype=torch.float32)',
        f'image = pipe("{prompt}", num_inference_steps=20).images[0]',
        "```",
        "",
    ]
    return atomic_write_text(out / "pipeline" / "README.md", "\n".join(lines))


def quick_eval(
    pipe_dir: str | Path,
    n: int = 64,
    steps: int = 20,
    device: str = "cpu",
    guidance: float = 5.0,
    world: str = "shapes",
    batch: int = 16,
) -> dict[str, float]:
    """Oracle all-correct accuracy on ``n`` held-out prompts of ``world``: CFG (w=guidance) vs unguided (w=1).

    One ``torch.Generator`` per image, seeded from the held-out item, so results do not depend on batch.
    """
    from diffusers import StableDiffusionPipeline

    from dicecfg.sampling.generate import generators
    from dicecfg.world.worlds import get_world

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    the_world = get_world(world)
    items, oracle, result = the_world.heldout_set(n), the_world.oracle(), {}
    for name, w in (("cfg", guidance), ("unguided", 1.0)):
        images = []
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            gens = generators(torch.device(device), [it.seed for it in chunk])
            out = pipe(
                [it.prompt for it in chunk],
                num_inference_steps=steps,
                guidance_scale=w,
                generator=gens,
                output_type="np",
            ).images
            images.append((out * 255).round().astype(np.uint8))
        scores = oracle.score(np.concatenate(images), [it.spec for it in items])
        result[name] = float(np.mean(scores["all"]))
        for key in oracle.keys:
            if key != "all":
                result[f"{name}_{key}"] = float(np.mean(scores[key]))
    result["gap"] = result["cfg"] - result["unguided"]
    return result
