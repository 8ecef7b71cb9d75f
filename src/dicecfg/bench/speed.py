"""Sampling speed of CFG versus DICE (`dice bench`), through the stock pipeline.

What is timed, per row (architecture or model, batch size): one ``pipe(...)`` call with pre-computed
embeddings and ``output_type="latent"`` (the scheduler loop and the denoiser), for CFG (guidance_scale=w: the
stock pipeline runs c and c_neg as one batch of 2B) and for DICE (guidance_scale=1, batch B, the sharpener
run inside the timed call). Text encoding is excluded: both methods encode the same prompt and the same
negative prompt once. The VAE decode is excluded from both and reported in its own column (it is the same
for both methods). The sharpener alone is timed too, as a percentage of the DICE run: every edit one DICE call
makes (one per image for the paper's sharpener; one per block for ``--time-edges``; one per step, all in one
sharpener call, for ``--time-embed sinusoidal``), as ``sharpener_ms``, with the edits per image
(``sharpener_edits``) and one sharpener call of a single edit per image (``sharpener_call_ms``: the cost per step
of a continuous-time sharpener evaluated one step at a time).

On CUDA: warm-up calls, then CUDA-event timing of each call, CFG and DICE interleaved, median of the repeats.
On CPU: the same with wall-clock timing. Rows are appended to the JSON file as they finish, and rows already
in it are skipped, so a run cut short resumes.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..flags import Checked, opt
from ..pipeline import device_option, dtype_option
from ..sampling.fast import FAST_MODES, fast_mode
from ..sampling.methods import PEER_STOP
from ..sharpener import TIME_EMBEDS

log = logging.getLogger(__name__)
PROMPT = "a photo of a red car in the city at night"
ENV_BEFORE = {"time_embed": "none"}  # what rows written before a setting was recorded were made with


@dataclass(frozen=True)
class BenchConfig(Checked):
    """`dice bench`: what to time (random full-size architectures or a model), at which batch sizes, how."""

    archs: tuple[str, ...] = opt(
        (),
        "random full-size architectures (bench/archs; default: all, unless --model)",
        flag="--arch",
        metavar="ARCH",
    )
    model: str | None = opt(
        None, "a diffusers folder or hub id to time instead (its real weights)", path="model"
    )
    sharpener: str | None = opt(
        None, "sharpener folder for --model (default: a random one of the right size)"
    )
    batch_sizes: tuple[int, ...] = opt((1, 4, 16), "images per call")
    steps: int = opt(20, "sampling steps")
    guidance_scale: float = opt(5.0, "w of the CFG runs (any w > 1 costs the same)")
    dice_stop: float = opt(
        1.0,
        "DICE on the first steps only, up to this fraction (as a tuned sharpener records; the plain prompt "
        "after): timed with the step route it needs",
        min=0.0,
        max=1.0,
    )
    time_edges: tuple[float, ...] = opt(
        (), "the random sharpener edits per block of timesteps cut at these (one sharpener call per image)"
    )
    time_embed: str = opt(
        "none",
        'the random sharpener\'s edit a smooth function of t ("sinusoidal"): an edit per step, all made in one '
        "sharpener call per DICE call",
        choices=TIME_EMBEDS,
    )
    peer_stop: float = opt(
        PEER_STOP,
        "the training-free peer timed beside DICE: CFG on the first steps, up to this fraction of them "
        "(0.1 = 2 of 20 steps guided; 0: no peer column)",
        min=0.0,
        max=1.0,
    )
    repeats: int = opt(5, "timed calls per method and row (the median is reported)")
    warmup: int = opt(2, "untimed calls per method first")
    height: int | None = opt(None, "image height in pixels (default: the model's native size)")
    width: int | None = opt(None, "image width in pixels (default: the model's native size)")
    decode: bool = opt(True, "also time the VAE decode (reported separately)")
    fast: str = opt(
        "off",
        "also time a fast path: graphs (--fast alone: the denoiser as CUDA graphs) or compile (torch.compile); "
        "fast CFG, DICE and unguided, the first call apart",
        choices=FAST_MODES,
        const="graphs",
    )
    device: str | None = device_option()
    dtype: str | None = dtype_option()
    out: str | None = opt(
        None, "JSON file: rows are appended as they finish; existing rows are skipped", path="out_file"
    )
    command: str = opt("", "the command line, recorded with every row", cli=False)


class Timer:
    """Milliseconds of one call: CUDA events on a CUDA device, else wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000.0


def random_sharpener(dim: int, family: str, num_tokens: int, seed: int = 0, time_edges=(), time_embed="none"):
    """A sharpener of the paper's size with random weights (speed does not depend on weights)."""
    from ..sharpener import Sharpener

    torch.manual_seed(seed)
    sharp = Sharpener(
        dim, family=family, num_tokens=num_tokens, time_edges=list(time_edges), time_embed=time_embed
    )
    torch.nn.init.normal_(sharp.proj_out.weight, std=0.02)
    if time_embed != "none":
        torch.nn.init.normal_(sharp.time_mlp[2].weight, std=0.02)
    return sharp.eval()


def edits_per_image(sharpener: Any, steps: int, stop: float) -> int:
    """Edits the sharpener makes per image in one DICE call of ``steps`` steps with the edit on [0, stop)."""
    from ..sampling.steps import guided_steps

    if sharpener.config.get("time_embed", "none") != "none":
        return len(guided_steps(0.0, stop, steps))
    return len(sharpener.config.get("time_edges") or []) + 1


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bench_methods(sharpener: Any, cfg: BenchConfig) -> dict[str, Any]:
    """The methods a row times: CFG, DICE (on its first steps with ``dice_stop``), unguided sampling, and the
    training-free peer (CFG on the first steps) with ``peer_stop``."""
    from ..sampling.methods import CFG, Dice, Unguided

    dice = Dice(sharpener, 1.0, 0.0, cfg.dice_stop) if cfg.dice_stop > 0 else Dice(sharpener, 1.0)
    methods = {"cfg": CFG(cfg.guidance_scale), "dice": dice, "unguided": Unguided()}
    return methods | ({"peer": CFG(cfg.guidance_scale, stop=cfg.peer_stop)} if cfg.peer_stop > 0 else {})


def bench_variants(methods: dict[str, Any], mode: str) -> dict[str, tuple[str, bool | str]]:
    """Variant name -> (method, fast path): eager CFG, DICE (and peer); with a fast ``mode`` the same on it,
    plus fast unguided sampling (the floor DICE is held to)."""
    eager = [m for m in ("cfg", "dice", "peer") if m in methods]
    variants: dict[str, tuple[str, bool | str]] = {m: (m, False) for m in eager}
    if mode != "off":
        variants |= {f"fast_{m}": (m, mode) for m in ("cfg", "dice", "unguided", "peer") if m in methods}
    return variants


def time_variants(
    run: Callable[[str, bool | str], None],
    sharpen: Callable[[], None],
    variants: dict[str, tuple[str, bool | str]],
    timer: Timer,
    *,
    warmup: int,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Warm-up calls, then ``repeats`` timed rounds of every variant and of the sharpener alone, interleaved so
    drift (clocks, heat) hits every variant alike, the order turning so no variant always follows the same
    other one. Returns the times (ms) of each and the first fast call of each shape (capture or compilation,
    timed apart from the steady state)."""
    first: dict[str, float] = {}
    for i in range(warmup):
        for name, (method, fast) in variants.items():
            if i == 0 and fast:
                first[name] = timer(lambda m=method, f=fast: run(m, f))
            else:
                run(method, fast)
        sharpen()
    times: dict[str, list[float]] = {k: [] for k in [*variants, "sharpener"]}
    order = list(variants.items())
    for r in range(repeats):
        for name, (method, fast) in order if r % 2 == 0 else order[::-1]:
            times[name].append(timer(lambda m=method, f=fast: run(m, f)))
        times["sharpener"].append(timer(sharpen))
    return times, first


def bench_row(pipe: Any, sharpener: Any, batch: int, cfg: BenchConfig) -> dict[str, Any]:
    """Time CFG and DICE sampling (and the sharpener, and the decode) for one batch size.

    With ``cfg.fast`` the same calls are also timed on the fast path (``dicecfg.fast``), plus fast unguided
    sampling (the floor DICE is held to); the first fast call of each shape (warm-up and graph capture) is
    reported apart from the steady-state medians.
    """
    from ..families import family_of
    from ..sampling.generate import generators, sample_batch
    from ..sampling.methods import sharpen_cond
    from ..sampling.steps import StepClock

    fam = family_of(pipe)
    device = pipe._execution_device
    timer = Timer(device)
    mode = fast_mode(cfg.fast)
    cond, neg = fam.encode(pipe, [PROMPT] * batch), fam.encode(pipe, [""] * batch)  # excluded: same for both
    sharpener.to(device=device, dtype=cond.embeds.dtype)
    common = dict(num_inference_steps=cfg.steps, output_type="latent", height=cfg.height, width=cfg.width)
    latents: list[torch.Tensor] = []
    methods = bench_methods(sharpener, cfg)

    def run(method: str, fast: bool | str = False) -> None:
        out, _ = sample_batch(
            pipe, fam, methods[method], cond, neg, generators(device, range(batch)), fast=fast, **common
        )
        latents[:] = [out]

    def sharpen() -> None:  # the sharpener's work of one DICE call: every edit it makes, at every step
        _, pick = methods["dice"].schedule(fam, cond, neg)
        if (
            pick is not None
        ):  # an interval or a time-dependent edit: the steps of the last call (scheduler kept)
            clock = StepClock(pipe.scheduler)
            clock.begin(None)
            for k in range(len(clock.times)):
                pick(clock.at(k))

    def one_call() -> None:  # one sharpener call, one edit per image (a step of a per-step evaluation)
        t = torch.full((batch,), 500.0, device=device) if sharpener.time_dependent else None
        sharpen_cond(fam, sharpener, cond, neg, 1.0, t=t)

    with torch.inference_mode():
        warmup = max(cfg.warmup, 1 if mode != "off" else 0)
        variants = bench_variants(methods, mode)
        times, first = time_variants(run, sharpen, variants, timer, warmup=warmup, repeats=cfg.repeats)
        one_call()
        times["sharpener_call"] = [timer(one_call) for _ in range(cfg.repeats)]
        decode_ms = _decode_ms(pipe, latents[0], timer, max(1, cfg.repeats // 2)) if cfg.decode else None
        diff = _fast_vs_eager(run, latents, ("cfg", "dice"), mode) if mode != "off" else {}
    med = {k: statistics.median(v) for k, v in times.items()}
    row = eager_columns(med, batch) | {
        "sharpener_edits": edits_per_image(sharpener, cfg.steps, cfg.dice_stop or 1.0),
        "sharpener_call_ms": med["sharpener_call"],
        "decode_ms": decode_ms,
        "times_ms": times,
        "latent_shape": list(latents[0].shape),
    }
    if "peer" in methods:
        row |= peer_columns(methods["peer"], med, cfg.steps)
    if mode != "off":
        row |= fast_columns(med, first, mode) | {"fast_path": _fast_path_used(pipe, fam, mode), **diff}
    return row


def eager_columns(med: dict[str, float], batch: int) -> dict[str, Any]:
    """CFG against DICE on the eager path, and the sharpener's share of a DICE call (medians in ms)."""
    return {
        "batch": batch,
        "cfg_ms": med["cfg"],
        "dice_ms": med["dice"],
        "ratio": med["cfg"] / med["dice"],
        "sharpener_ms": med["sharpener"],
        "sharpener_pct": 100.0 * med["sharpener"] / med["dice"],
        "cfg_ms_per_image": med["cfg"] / batch,
        "dice_ms_per_image": med["dice"] / batch,
    }


def peer_columns(peer: Any, med: dict[str, float], steps: int) -> dict[str, Any]:
    """The training-free peer: its label, NFE at these steps, time and its ratio to DICE (eager, and fast)."""
    out = {"peer": peer.label, "peer_nfe": peer.nfe(steps), "peer_ms": med["peer"]}
    out["peer_dice_ratio"] = med["peer"] / med["dice"]
    if "fast_peer" in med:
        out |= {"fast_peer_ms": med["fast_peer"], "fast_peer_dice_ratio": med["fast_peer"] / med["fast_dice"]}
    return out


def fast_columns(med: dict[str, float], first: dict[str, float], mode: str) -> dict[str, Any]:
    """The fast path (``mode``): each method's time on it, its first calls, and its ratios."""
    out: dict[str, Any] = {"fast_mode": mode}
    out |= {f"{k}_ms": med[k] for k in ("fast_cfg", "fast_dice", "fast_unguided")}
    out |= {f"{k}_first_ms": v for k, v in first.items()}
    return out | {
        "fast_ratio": med["fast_cfg"] / med["fast_dice"],  # fast CFG / fast DICE
        "speedup_vs_eager_cfg": med["cfg"] / med["fast_dice"],  # the fast path's aim: >= 2 at batch 1
        "fast_dice_over_unguided_pct": 100.0 * (med["fast_dice"] / med["fast_unguided"] - 1.0),
        # the sharpener's work of a DICE call (every edit it makes) against a fast DICE call: the 2% budget of a
        # time-dependent sharpener at batch 1 (issue 30)
        "fast_sharpener_pct": 100.0 * med["sharpener"] / med["fast_dice"],
    }


@dataclass(frozen=True)
class Column:
    """A column of the `dice bench` table: its title, the row key it shows (or a function of the row), how, and
    the group of columns it belongs to (shown when some row has the group)."""

    title: str
    key: str | Callable[[dict[str, Any]], Any]
    fmt: str = "{}"
    group: str = "eager"


# The table `dice bench` prints last, in one place beside the row it shows.
TABLE = (
    Column("model", "name"), Column("device", "device"), Column("dtype", "dtype"), Column("batch", "batch"),
    Column("steps", "steps"), Column("CFG ms", "cfg_ms", "{:.1f}"), Column("DICE ms", "dice_ms", "{:.1f}"),
    Column("CFG/DICE", "ratio", "{:.3f}"), Column("sharpener %", "sharpener_pct", "{:.2f}"),
    Column("edits/image", "sharpener_edits"), Column("one sharpener call ms", "sharpener_call_ms", "{:.2f}"),
    Column("peer", "peer", group="peer"), Column("peer NFE", "peer_nfe", group="peer"),
    Column("peer ms", "peer_ms", "{:.1f}", "peer"), Column("peer/DICE", "peer_dice_ratio", "{:.3f}", "peer"),
    Column("decode ms", "decode_ms", "{:.1f}"),
    Column("fast path", lambda r: r.get("fast_mode", "graphs"), group="fast"),
    Column("fast CFG ms", "fast_cfg_ms", "{:.1f}", "fast"), Column("fast DICE ms", "fast_dice_ms", "{:.1f}", "fast"),
    Column("fast unguided ms", "fast_unguided_ms", "{:.1f}", "fast"),
    Column("sharpener % of fast DICE", "fast_sharpener_pct", "{:.2f}", "fast"),
    Column("eager CFG / fast DICE", "speedup_vs_eager_cfg", "{:.3f}", "fast"),
    Column("fast peer ms", "fast_peer_ms", "{:.1f}", "fast_peer"),
    Column("fast peer/DICE", "fast_peer_dice_ratio", "{:.3f}", "fast_peer"),
    Column("first calls ms", lambda r: sum(v for k, v in r.items() if k.endswith("_first_ms")), "{:.0f}", "fast"),
)  # fmt: skip
GROUP_KEY = {"peer": "peer_ms", "fast": "fast_dice_ms", "fast_peer": "fast_peer_ms"}  # a row has the group


def bench_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The titles and cells of the `dice bench` table: a group's columns appear when some row has the group
    (with ``-`` in rows without it); a row that failed shows its error."""
    shown = [c for c in TABLE if c.group == "eager" or any(GROUP_KEY[c.group] in r for r in rows)]
    if any(GROUP_KEY["fast_peer"] in r for r in rows) and not any(GROUP_KEY["peer"] in r for r in rows):
        shown = [c for c in shown if c.group != "fast_peer"]
    body = []
    for r in rows:
        if "error" in r:
            cells = [r[c.key] for c in shown[:5]] + [r["error"]]
            body.append(cells + [""] * (len(shown) - len(cells)))
            continue
        cells = []
        for c in shown:
            value = c.key(r) if callable(c.key) else r.get(c.key)
            has_group = c.group == "eager" or GROUP_KEY[c.group] in r
            if not has_group:  # a row without the fast path leaves its columns empty; one without a peer: -
                cells.append("" if "fast_dice_ms" not in r and c.group.startswith("fast") else "-")
            elif value is None:
                cells.append("-")
            else:
                cells.append(c.fmt.format(value))
        body.append(cells)
    return [c.title for c in shown], body


def _fast_vs_eager(
    run: Callable[..., None], latents: list[torch.Tensor], methods: tuple[str, ...], mode: str
) -> dict:
    """Largest difference between fast (``mode``) and eager latents of the same seeds (absolute, and relative
    to the largest eager value), per method."""
    out = {}
    for method in methods:
        run(method, False)
        eager = latents[0].float()
        run(method, mode)
        err = (latents[0].float() - eager).abs().max().item()
        out[f"fast_{method}_max_abs_diff"] = err
        out[f"fast_{method}_max_rel_diff"] = err / max(eager.abs().max().item(), 1e-12)
    return out


def _fast_path_used(pipe: Any, fam: Any, mode: str) -> str:
    den = fam.denoiser(pipe).__dict__
    if mode == "compile":
        compiled = den.get("_dice_compiled")
        if compiled is None or compiled.failed:
            return "eager (fallback)"
        return f"torch.compile ({compiled.calls} calls, first {compiled.first_call_ms:.0f} ms)"
    graphed = den.get("_dice_graphed")
    if graphed is None or graphed.failed:
        return "eager (fallback)"
    return f"cuda graphs ({len(graphed.graphs)} captured, {graphed.capture_ms:.0f} ms)"


def _decode_ms(pipe: Any, latents: torch.Tensor, timer: Timer, repeats: int) -> float | None:
    """Median time of the VAE decode of one batch of latents (None: no VAE, or out of memory)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return None
    lat = latents / vae.config.scaling_factor
    try:
        vae.decode(lat)  # warm-up
        return statistics.median(timer(lambda: vae.decode(lat)) for _ in range(repeats))
    except torch.OutOfMemoryError:
        log.warning("VAE decode of %s latents: out of memory", tuple(latents.shape))
        return None


def _load_rows(path: Path | None) -> list[dict[str, Any]]:
    """The rows of an earlier `dice bench --out` file; any other file there is refused, never overwritten."""
    if path is None or not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("rows")
    except (ValueError, AttributeError):  # not JSON, not UTF-8, not an object
        rows = None
    if not isinstance(rows, list):
        raise InputError(f"{path} exists and is not a `dice bench` results file; pick another --out.")
    return rows


def run_bench(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Time every (architecture or model) x batch size; returns the rows (also written to ``cfg.out``)."""
    from ..families import family_of
    from ..pipeline import resolve_device, resolve_dtype
    from ..runs.folder import versions
    from ..runs.io import atomic_write_json
    from . import archs

    if cfg.steps < 1 or cfg.repeats < 1 or cfg.warmup < 0 or not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise InputError("bench needs steps >= 1, repeats >= 1, warmup >= 0 and batch sizes >= 1.")
    edges = list(cfg.time_edges)
    if any(not 0 < e < 1000 for e in edges) or edges != sorted(set(edges), reverse=True):
        raise InputError(f"--time-edges must be distinct timesteps in (0, 1000), descending (got {edges}).")
    if edges and cfg.time_embed != "none":
        raise InputError("--time-edges and --time-embed are two kinds of time-dependent sharpener; give one.")
    device = torch.device(resolve_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device.type)
    names = [cfg.model] if cfg.model else list(cfg.archs or archs.available())
    if not cfg.model:
        unknown = set(names) - set(archs.available())
        if unknown:
            raise InputError(
                f"Unknown architecture(s) {', '.join(sorted(unknown))}; known: {', '.join(archs.available())}."
            )
    out = Path(cfg.out) if cfg.out else None
    rows = _load_rows(out)
    env = {
        "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "steps": cfg.steps,
        "height": cfg.height,
        "width": cfg.width,
        "guidance_scale": cfg.guidance_scale,
        "fast": cfg.fast,
        "peer_stop": cfg.peer_stop,
        "dice_stop": cfg.dice_stop,
        "time_edges": list(cfg.time_edges),
        "time_embed": cfg.time_embed,
    }
    for name in names:
        todo = [
            b
            for b in cfg.batch_sizes
            if not any(
                r["name"] == name
                and r["batch"] == b
                and all(r.get(k, ENV_BEFORE.get(k)) == v for k, v in env.items())
                for r in rows
            )
        ]
        if not todo:
            log.info("%s: all rows already in %s", name, out)
            continue
        pipe = _pipeline(name, cfg, dtype, device)
        fam = family_of(pipe)
        sharp = (
            _load_sharpener(cfg.sharpener)
            if cfg.model and cfg.sharpener
            else random_sharpener(
                fam.dim(pipe),
                fam.name,
                fam.num_tokens(pipe),
                time_edges=cfg.time_edges,
                time_embed=cfg.time_embed,
            )  # fmt: skip
        )
        for b in todo:
            log.info("%s: batch %d", name, b)
            try:
                row = bench_row(pipe, sharp, b, cfg)
            except torch.OutOfMemoryError:
                log.warning("%s batch %d: out of memory", name, b)
                row = {"batch": b, "error": "out of memory"}
            rows.append({"name": name, **env, **row, "versions": versions(), "command": cfg.command})
            if out is not None:
                atomic_write_json(out, {"config": asdict(cfg), "rows": rows})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del pipe
    return rows


def _pipeline(name: str, cfg: BenchConfig, dtype: torch.dtype, device: torch.device):
    if cfg.model:
        from ..pipeline import load_pipeline

        pipe = load_pipeline(cfg.model, dtype=dtype, device=device)
    else:
        from .archs import random_pipeline

        pipe = random_pipeline(name, dtype=dtype, device=str(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_sharpener(path: str):
    from ..sharpener import Sharpener

    return Sharpener.from_pretrained(path)
