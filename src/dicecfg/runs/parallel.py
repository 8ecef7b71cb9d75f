"""Several processes, one per GPU (docs/parallel.md): joining the process group, the collectives the stages
use, and ``dice CMD --gpus N`` relaunching itself through torch.distributed.run.

A process launched by ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 in its environment) joins the
process group here. Distillation (``training.loop``) replicates the sharpener and averages its gradients by hand
with one all-reduce per step (the student calls ``Sharpener.edit``, not ``forward``, so no DDP wrapper is
needed); sampling and evaluation (``sampling.shard``) split the prompts by index and gather what each rank made
to rank 0. Rank 0 alone writes the shared files; the others wait for it at barriers.
"""

from __future__ import annotations

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
    """Run ``dice <argv>`` (less ``--gpus``) in ``nproc`` processes through torch.distributed.run on this host;
    returns its exit code. Refuses more processes than the host has GPUs (CPU cores where it has none)."""
    gpus = torch.cuda.device_count()
    limit = gpus or os.cpu_count() or 1
    if nproc > limit:
        raise InputError(f"--gpus {nproc}: this host has {limit} {'GPUs' if gpus else 'CPU cores (no GPU)'}.")
    cmd = [sys.executable, "-m", "dicecfg.runs.parallel", "--nnodes", "1", "--nproc-per-node", str(nproc)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "dicecfg.cli"]
    cmd += without_gpus(argv)
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:  # the launcher forwards the signal to the ranks, which checkpoint and stop
        return 130


def launch(args: Sequence[str]) -> int:
    """torch.distributed.run with ``args``; a failed process ends it with that process's exit code (2 for an
    input error, which the process has said in one line) instead of the launcher's traceback."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    for name in ("torch.distributed.elastic", "torch.distributed.run"):  # the ranks say what failed
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        main(list(args))
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 1
    return 0


if __name__ == "__main__":  # what ``relaunch`` runs
    sys.exit(launch(sys.argv[1:]))
