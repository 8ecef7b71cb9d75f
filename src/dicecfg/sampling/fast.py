"""The fast sampling paths: the denoiser replayed as CUDA graphs (``fast=True`` / ``"graphs"``, ``--fast``) or
compiled by ``torch.compile`` (``fast="compile"``, ``--fast compile``; see the end of this docstring).

At batch 1 an eager denoiser call is bound by kernel launches, so CFG's batch of 2 costs about what DICE's
batch of 1 costs and halving the evaluations buys little. Replaying the call as a CUDA graph removes the
launches. How it works:
- the stock pipeline still runs its own loop (one sampling code path); only the denoiser's ``forward`` is
  swapped, for the duration of one pipeline call, for a ``GraphedForward``;
- a call's tensors are copied into static input buffers and one graph is replayed; a graph is captured the
  first time a call signature is seen (the structure of the arguments, every tensor's shape, dtype and
  device, every other argument's value), and kept on the denoiser, so it is reused across calls and prompts;
  all graphs of a denoiser share one memory pool;
- the output is copied out of the graph's static buffer, so a later replay cannot overwrite it;
- CFG gets the same treatment (its batch of 2B is one more signature), so comparisons stay fair.

Unsupported setups (no CUDA device, a pipeline with accelerate offload hooks, a call whose arguments cannot be
keyed, a failed capture) run eager with a one-line notice. ``torch.compile(mode="reduce-overhead")`` was
measured against these hand-made graphs; see BENCHMARKS.md ("Fast sampling path") for why graphs are kept as
the default.

``fast="compile"`` swaps ``forward`` the same way for a ``torch.compile``d one (``CompiledForward``; on CUDA in
``reduce-overhead`` mode, which adds CUDA graphs to Inductor's fused kernels). One compiled function is kept on
the denoiser and serves every call of the process; each new shape compiles once. Inductor keeps what it
compiled in its on-disk caches (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_$USER``), so a second
process pays far less for its first call. A compilation that fails runs eager with a notice.

``fast="auto"`` (the default of the long jobs, `dice sample` with several prompts and `dice eval`) picks one of
these itself (``resolve_fast``): eager off CUDA and for a single image, else graphs, or compile for a job long
enough to pay for compiling (``COMPILE_FROM_IMAGES``). ``path_ran`` says which path a call actually ran on
(``"off"`` where it fell back to eager), for the outputs to record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError

log = logging.getLogger(__name__)
FAST_MODES = ("off", "graphs", "compile")
FAST_CHOICES = ("auto", *FAST_MODES)  # what the sampling jobs accept: "auto" resolves to one of FAST_MODES
# "auto" picks compile over graphs from this many images of one shape per process. Measured on one H200, SD1.5 at
# batch 1, 20 steps (docs/fast.md): an unguided image takes 117 ms compiled against 197 ms with graphs, 80 ms
# saved per image, while the first call of a shape compiles for 52 s in a first process (10 s from Inductor's
# on-disk cache). 52 s / 0.080 s = 650 images per shape pay for a cold compile (125 for a cached one; the cold
# cost is the one to plan for).
COMPILE_FROM_IMAGES = 650
MAX_GRAPHS = 16  # signatures per denoiser; more means the arguments change per step (eager is then better)
_ATOMS = (type(None), bool, int, float, str)


class Unkeyable(Exception):
    """An argument that cannot be part of a graph's signature (the call runs eager)."""


def flatten(obj: Any) -> tuple[list[torch.Tensor], Any]:
    """Tensors of a nested call (tuples, lists, dicts) and a hashable spec that rebuilds it around them."""
    leaves: list[torch.Tensor] = []

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            leaves.append(x)
            return ("T", tuple(x.shape), x.dtype, str(x.device))
        if isinstance(x, (tuple, list)):
            return (type(x), tuple(walk(v) for v in x))
        if isinstance(x, dict):
            return (type(x), tuple((k, walk(v)) for k, v in x.items()))
        if isinstance(x, _ATOMS):
            return ("A", x)
        raise Unkeyable(f"argument of type {type(x).__name__}")

    return leaves, walk(obj)


def unflatten(spec: Any, leaves: Iterator[torch.Tensor]) -> Any:
    """Inverse of ``flatten``: the same structure, with ``leaves`` in place of its tensors."""
    if spec[0] == "T":
        return next(leaves)
    if spec[0] == "A":
        return spec[1]
    kind, items = spec
    if issubclass(kind, dict):
        return kind(**{k: unflatten(v, leaves) for k, v in items})
    return kind(unflatten(v, leaves) for v in items)


@dataclass
class Graph:
    """One captured call: static inputs, static outputs, and how to replay."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    out_spec: Any
    replay: Callable[[], None]
    capture_ms: float


def cuda_capture(fn: Callable[[], Any], device: torch.device, pool: Any, warmup: int = 2) -> tuple[Any, Any]:
    """Capture ``fn`` (which reads static buffers) as a CUDA graph; returns (its output, replay)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up off the capture (cuBLAS workspaces, lazy inits)
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return out, graph.replay


def eager_capture(fn: Callable[[], Any], device: torch.device, pool: Any) -> tuple[Any, Any]:
    """A stand-in for ``cuda_capture`` that "replays" by running ``fn`` again into the same output buffers.

    It runs anywhere, so the buffer handling (signatures, copies in and out) is tested on CPU."""
    out = fn()
    outs, _ = flatten(out)

    def replay() -> None:
        with torch.no_grad():
            for buf, new in zip(outs, flatten(fn())[0], strict=True):
                buf.copy_(new)

    return out, replay


@dataclass
class GraphedForward:
    """A denoiser ``forward`` that replays one graph per call signature."""

    forward: Callable[..., Any]  # the denoiser's own forward
    device: torch.device
    capture: Callable[..., tuple[Any, Any]] = cuda_capture
    graphs: dict[Any, Graph] = field(default_factory=dict)
    failed: bool = False
    pool: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.forward(*args, **kwargs)
        try:
            leaves, spec = flatten((args, kwargs))
        except Unkeyable as e:
            notice(f"fast sampling: {e} cannot be captured; this call runs eager")
            return self.forward(*args, **kwargs)
        graph = self.graphs.get(spec)
        if graph is None:
            if len(self.graphs) >= MAX_GRAPHS:
                notice(f"fast sampling: over {MAX_GRAPHS} call signatures; running eager from now on")
                self.failed = True
                return self.forward(*args, **kwargs)
            try:
                graph = self._capture(leaves, spec)
            except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager, said once
                notice(f"fast sampling: capture failed ({type(e).__name__}: {e}); running eager")
                self.failed = True
                return self.forward(*args, **kwargs)
            self.graphs[spec] = graph
        with torch.no_grad():
            for buf, x in zip(graph.inputs, leaves, strict=True):
                buf.copy_(x)
        graph.replay()
        return unflatten(graph.out_spec, iter([o.clone() for o in graph.outputs]))

    def _capture(self, leaves: list[torch.Tensor], spec: Any) -> Graph:
        t0 = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():  # buffers usable in and out of inference mode
            inputs = [x.detach().clone() for x in leaves]
        args, kwargs = unflatten(spec, iter(inputs))
        if self.pool is None and self.device.type == "cuda":
            self.pool = torch.cuda.graph_pool_handle()
        with torch.no_grad():
            out, replay = self.capture(lambda: self.forward(*args, **kwargs), self.device, self.pool)
        outputs, out_spec = flatten(out)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Graph(inputs, outputs, out_spec, replay, (time.perf_counter() - t0) * 1000.0)

    @property
    def capture_ms(self) -> float:
        return sum(g.capture_ms for g in self.graphs.values())


class Notices:
    """One-line warnings said once each: by default once per process (``NOTICES``)."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def say(self, msg: str) -> None:
        if msg not in self.said:
            self.said.add(msg)
            log.warning(msg)

    def forget(self) -> None:
        """Say every notice again when next due (a new job in a long-lived process; the tests)."""
        self.said.clear()


NOTICES = Notices()


def notice(msg: str) -> None:
    """A one-line warning, said once per process (``NOTICES``)."""
    NOTICES.say(msg)


def unsupported(module: torch.nn.Module, device: torch.device) -> str | None:
    """Why the fast path cannot run here (None: it can)."""
    if device.type != "cuda":
        return f"fast sampling needs a CUDA device (this pipeline runs on {device.type}); running eager"
    if not torch.cuda.is_available():
        return "fast sampling needs CUDA, which this torch build lacks; running eager"
    if hasattr(module, "_hf_hook"):
        return "fast sampling does not combine with accelerate offload hooks; running eager"
    return None


def fast_mode(fast: bool | str | None) -> str:
    """The fast path a ``fast=`` argument names: ``"off"`` (False, None), ``"graphs"`` (True), ``"compile"``, or
    ``"auto"`` (``resolve_fast`` picks one per job)."""
    if fast is None or fast is False:
        return "off"
    if fast is True:
        return "graphs"
    if isinstance(fast, str) and fast in FAST_CHOICES:
        return fast
    raise InputError(
        f"fast={fast!r} is not a fast path: use False, True (= 'graphs'), 'graphs', 'compile' or 'auto'."
    )


def on_cuda(device: torch.device | str) -> bool:
    """Whether ``device`` is a CUDA device this torch can run."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def resolve_fast(fast: bool | str | None, device: torch.device | str, images: int) -> str:
    """The fast path to run (one of ``FAST_MODES``). ``"auto"``, for a job of ``images`` images of one shape in
    this process: eager off CUDA (silently) and for a single image; compile from ``COMPILE_FROM_IMAGES`` images
    on (saying what the one-time compilation costs); graphs below. Other values as ``fast_mode``."""
    mode = fast_mode(fast)
    if mode != "auto":
        return mode
    if images < 2 or not on_cuda(device):
        return "off"
    if images < COMPILE_FROM_IMAGES:
        return "graphs"
    notice(
        f"fast path: compile ({images} images per shape, compile pays from {COMPILE_FROM_IMAGES}); the first call "
        "of each shape compiles once, about 52 s for SD1.5 on an H200 (10 s from Inductor's on-disk cache)"
    )
    return "compile"


def path_ran(pipe: Any, denoiser: torch.nn.Module, mode: str) -> str:
    """The path a pipeline call run in ``speedup(pipe, denoiser, mode)`` actually took: ``mode``, or ``"off"``
    where it ran eager (unsupported setup, failed capture or compilation)."""
    if mode == "graphs":
        graphed = denoiser.__dict__.get("_dice_graphed")
        ok = unsupported(denoiser, pipe._execution_device) is None and graphed is not None
        return "graphs" if ok and not graphed.failed else "off"
    if mode == "compile":
        compiled = denoiser.__dict__.get("_dice_compiled")
        ok = compile_unsupported(denoiser) is None and compiled is not None
        return "compile" if ok and not compiled.failed else "off"
    return "off"


@contextlib.contextmanager
def swapped_forward(denoiser: torch.nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """``denoiser.forward`` is ``forward`` while the block runs; the instance's own attribute (if any) after."""
    had_own = "forward" in denoiser.__dict__
    saved = denoiser.__dict__.get("forward")
    denoiser.__dict__["forward"] = forward
    try:
        yield
    finally:
        if had_own:
            denoiser.__dict__["forward"] = saved
        else:
            del denoiser.__dict__["forward"]


@contextlib.contextmanager
def fast_denoiser(pipe: Any, denoiser: torch.nn.Module) -> Iterator[GraphedForward | None]:
    """Swap ``denoiser.forward`` for its graphed version while the block runs (restored after).

    Yields the ``GraphedForward`` (its graphs persist on the denoiser between blocks), or None when this
    setup runs eager. Tests swap the module's ``cuda_capture`` for ``eager_capture`` to run this on CPU.
    """
    device = pipe._execution_device
    reason = unsupported(denoiser, device)
    if reason is not None:
        notice(reason)
        yield None
        return
    graphed = denoiser.__dict__.get("_dice_graphed")
    if graphed is None or graphed.capture is not cuda_capture:
        graphed = GraphedForward(denoiser.forward, device, cuda_capture)
        denoiser.__dict__["_dice_graphed"] = graphed
    with swapped_forward(denoiser, graphed):
        yield graphed


def compile_forward(forward: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """``torch.compile`` of a denoiser's forward in torch.compile's ``mode`` ("default"; "reduce-overhead":
    Inductor's kernels replayed as CUDA graphs; ...): one graph per shape (no dynamic shapes). Tests swap this for
    a cheaper backend."""
    return torch.compile(forward, dynamic=False, mode=mode)


@dataclass
class CompiledForward:
    """A denoiser ``forward`` that calls its compiled version (eager, with a notice, once compiling failed)."""

    forward: Callable[..., Any]  # the denoiser's own forward
    compiled: Callable[..., Any]
    graphs: bool  # compiled in reduce-overhead mode (CUDA graph trees)
    calls: int = 0
    failed: bool = False
    first_call_ms: float | None = None  # the first call's wall time: compilation included
    shapes: set = field(default_factory=set)  # call signatures seen (each compiles once)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.forward(*args, **kwargs)
        if self.graphs:  # a new step of the CUDA graph trees: the pipeline consumed the earlier outputs
            torch.compiler.cudagraph_mark_step_begin()
        t0 = time.perf_counter()
        try:
            shape = flatten((args, kwargs))[1]
        except Unkeyable:
            shape = None
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a failed compilation runs eager, said once; a real error repeats
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            notice(f"compiling the denoiser failed ({type(e).__name__}: {first[:200]}); running eager")
            self.failed = True
            return self.forward(*args, **kwargs)
        if self.first_call_ms is None:
            self.first_call_ms = (time.perf_counter() - t0) * 1000.0
        if shape is not None and shape not in self.shapes:
            self.shapes.add(shape)
            log.info("torch.compile: a new shape compiled in %.1f s", time.perf_counter() - t0)
        self.calls += 1
        if self.graphs:  # the graph trees reuse output memory at the next step: keep our own copy
            leaves, spec = flatten(out)
            out = unflatten(spec, iter([o.clone() for o in leaves]))
        return out


def compile_unsupported(module: torch.nn.Module) -> str | None:
    """Why the compiled path cannot run here (None: it can)."""
    if hasattr(module, "_hf_hook"):
        return "torch.compile of the denoiser does not combine with accelerate offload hooks; running eager"
    return None


@contextlib.contextmanager
def compiled_denoiser(
    pipe: Any, denoiser: torch.nn.Module, training: bool = False, mode: str | None = None
) -> Iterator[CompiledForward | None]:
    """Swap ``denoiser.forward`` for its compiled version while the block runs (restored after).

    For sampling the compiled function stays on the denoiser, so later calls of this process reuse what was
    compiled (on CUDA in ``reduce-overhead`` mode, with CUDA graphs). For ``distill`` (``training``,
    ``DistillConfig.compile``) it is compiled afresh for the run, in torch.compile's ``mode``
    (``DistillConfig.compile_mode``; "default", as None: no CUDA graphs; "reduce-overhead": CUDA graph trees,
    which capture the student's differentiated pass and its backward as well)."""
    reason = compile_unsupported(denoiser)
    if reason is not None:
        notice(reason)
        yield None
        return
    compiled = None if training else denoiser.__dict__.get("_dice_compiled")
    if compiled is None:
        on_gpu = pipe._execution_device.type == "cuda"
        if mode is None:  # sampling: CUDA graphs on CUDA; training: Inductor's kernels alone
            mode = "reduce-overhead" if on_gpu and not training else "default"
        graphs = on_gpu and mode == "reduce-overhead"
        compiled = CompiledForward(denoiser.forward, compile_forward(denoiser.forward, mode), graphs)
        cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "PyTorch's default cache folder")
        log.info(
            "torch.compile: the first call of each shape compiles (%s; kept in %s)",
            "a minute or more" if pipe._execution_device.type == "cuda" else "several minutes on a CPU",
            cache,
        )
        if not training:
            denoiser.__dict__["_dice_compiled"] = compiled
    with swapped_forward(denoiser, compiled):
        yield compiled


def speedup(pipe: Any, denoiser: torch.nn.Module, fast: bool | str) -> contextlib.AbstractContextManager:
    """The context in which a pipeline call runs on the fast path ``fast`` names (``fast_mode``; ``"auto"`` must
    be resolved first, ``resolve_fast``)."""
    mode = fast_mode(fast)
    if mode == "graphs":
        return fast_denoiser(pipe, denoiser)
    if mode == "compile":
        return compiled_denoiser(pipe, denoiser)
    return contextlib.nullcontext()
