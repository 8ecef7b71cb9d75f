"""Several processes, one per GPU (docs/parallel.md): joining the process group, the collectives the stages
use, and ``dice CMD --gpus N`` relaunching itself, one process per GPU.

A process launched by ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 in its environment) joins the
process group here. Distillation (``training.loop``) replicates the sharpener and averages its gradients by hand
with one all-reduce per step (the student calls ``Sharpener.edit``, not ``forward``, so no DDP wrapper is
needed); sampling and evaluation (``sampling.shard``) split the prompts by index and gather what each rank made
to rank 0. Rank 0 alone writes the shared files; the others wait for it at barriers. ``relaunch`` starts the
processes itself (:class:`Workers`): it forwards signals to them, waits for them and names a rank that died.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DiceError, InputError


@dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls, device: torch.device | None = None) -> Parallel:
        """The process group of this process (joined here when the launcher's environment asks for one)."""
        import torch.distributed as dist

        if not dist.is_available():
            return cls()
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                return cls()
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
            if backend == "nccl":  # collectives on objects (broadcast_object_list) use the current device
                torch.cuda.set_device(device)
            dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
            atexit.register(_leave_group)
        return cls(dist.get_rank(), dist.get_world_size())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a small value: numbers, strings, lists, dicts)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """``obj`` of every rank, in rank order, on rank 0 (None on the others)."""
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the other ranks (they wait for rank 0 at a barrier), and leave
        it together: for work rank 0 writes to the run folder and the others read (the teacher pool)."""
        if not self.main:
            self.barrier()  # rank 0 has finished the block
        yield
        if self.main:
            self.barrier()  # let the others start
        self.barrier()  # everyone has finished it

    def share_error(self, err: BaseException | None) -> None:
        """Raise on every rank when rank 0 failed (rank 0 re-raises its own error), so none waits forever."""
        if self.world == 1:
            if err is not None:
                raise err
            return
        box = [None if err is None else f"{type(err).__name__}: {err}"]
        torch.distributed.broadcast_object_list(box, src=0)
        if err is not None:
            raise err
        if box[0] is not None:
            raise DiceError(f"rank 0 failed: {box[0]}")

    def reduce_step(self, loss: torch.Tensor, stop: bool) -> tuple[torch.Tensor, bool]:
        """Mean loss over the ranks and whether any rank was asked to stop (one all-reduce)."""
        if self.world == 1:
            return loss.detach(), stop
        buf = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
        torch.distributed.all_reduce(buf)
        return buf[0] / self.world, bool(buf[1] > 0)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks (flattened into one all-reduce)."""
        if self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def _leave_group() -> None:
    """Destroy this process's group before the interpreter exits: a group left to the exit's destructors can
    abort the process (``terminate called without an active exception``, SIGABRT) after its work is done."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` in a process launched as one of several (one GPU per process)."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device == "cuda":
        return f"cuda:{int(local_rank)}"
    return device


def main_process() -> bool:
    """Whether this process is rank 0 (or alone): the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch, ``relaunch``) started this process as one of several."""
    return "WORLD_SIZE" in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_gpus(argv: Sequence[str]) -> list[str]:
    """The command line without its ``--gpus N`` (or ``--gpus=N``): what each launched process runs."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--gpus":
            skip = not skip and a == "--gpus"
            continue
        if not a.startswith("--gpus="):
            out.append(a)
    return out


def relaunch(argv: Sequence[str], nproc: int) -> int:
    """Run ``dice <argv>`` (less ``--gpus``) in ``nproc`` processes on this host, one per rank (:class:`Workers`);
    returns their exit code. Refuses more processes than the host has GPUs (CPU cores where it has none)."""
    gpus = torch.cuda.device_count()
    limit = gpus or os.cpu_count() or 1
    if nproc > limit:
        raise InputError(f"--gpus {nproc}: this host has {limit} {'GPUs' if gpus else 'CPU cores (no GPU)'}.")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(nproc)}
    env |= {"LOCAL_WORLD_SIZE": str(nproc), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return Workers([sys.executable, "-m", "dicecfg.cli", *without_gpus(argv)], nproc, env).run()


class Workers:
    """The processes of one ``--gpus N`` run, rank r with ``RANK=LOCAL_RANK=r`` (what ``torchrun`` gives).

    - SIGINT and SIGTERM sent to the launcher are forwarded to every worker, once per signal received, and the
      launcher waits for all of them: a training run checkpoints and stops as one process does (a second signal
      stops at once), and no worker outlives the launcher. The workers have a process group of their own, so a
      Ctrl-C in the terminal reaches them once, through the launcher. On Linux a worker is also killed when the
      launcher dies without a chance to forward (SIGKILL).
    - A worker that dies (a signal, or an exit code other than 0 and 2) is reported in one line with its rank
      and the remedy (``DiceError``); the others are stopped (SIGTERM, then SIGKILL after ``grace`` seconds: they
      would wait for it forever at their next collective). Exit code 2 is a worker's own one-line error.
    """

    def __init__(self, cmd: Sequence[str], nproc: int, env: dict[str, str], *, grace: float = 10.0) -> None:
        self.cmd, self.nproc, self.env, self.grace = list(cmd), nproc, env, grace
        self.procs: list[subprocess.Popen] = []
        self.signals: list[int] = []

    def run(self) -> int:
        import signal

        handlers = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for rank in range(self.nproc):
                env = os.environ | self.env | {"RANK": str(rank), "LOCAL_RANK": str(rank)}
                self.procs.append(subprocess.Popen(self.cmd, env=env, preexec_fn=_worker_setup))
            return self._wait()
        finally:
            self._stop_all()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _forward(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    def _wait(self) -> int:
        import time

        while True:
            codes = [p.poll() for p in self.procs]
            if self.signals:  # stopping on the user's request: every worker finishes what it must
                if all(c is not None for c in codes):
                    return 128 + self.signals[0]
            elif any(c not in (None, 0) for c in codes):
                time.sleep(0.5)  # the ranks that lost contact with a dead one exit too: see them all
                codes = [p.poll() for p in self.procs]  # before the launcher stops the others itself
                self._stop_all()
                rank = _first_failure(codes)
                if codes[rank] == 2:  # the worker's own one-line error, already printed
                    return 2
                raise DiceError(_death(rank, self.nproc, codes[rank]))
            elif all(c == 0 for c in codes):
                return 0
            time.sleep(0.1)

    def _stop_all(self) -> None:
        """Stop the workers still running: SIGTERM, then SIGKILL after the grace period; reap them all."""
        import time

        alive = [p for p in self.procs if p.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        end = time.monotonic() + self.grace
        for p in alive:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _first_failure(codes: Sequence[int | None]) -> int:
    """The rank to name: one killed by a signal, else one that failed by itself, else one that lost contact."""
    failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
    return min(failed, key=lambda r: (codes[r] >= 0, codes[r] == PEER_LOST))


def _death(rank: int, world: int, code: int) -> str:
    import signal

    if code == PEER_LOST:
        how = "lost contact with the other processes"
    elif code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}"
    return (
        f"the process of rank {rank} (of {world}) {how}; the others were stopped. Re-run the same command to "
        "resume (what was finished is kept); if it happens again, run with --gpus 1 to see the error."
    )


PEER_LOST = 75  # a worker's exit code when a collective failed because another process is gone


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process of the group is gone (a launched worker then
    exits with ``PEER_LOST``, quietly: the launcher names the rank that died)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        w in text for w in ("Connection closed by peer", "gloo", "NCCL")
    )


def _worker_setup() -> None:
    """In a worker, before it runs: a process group of its own, and (Linux) death when the launcher dies."""
    import ctypes
    import signal

    os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
