"""Guards of a run folder: the run lock, graceful stop on SIGINT / SIGTERM, the NaN / Inf loss check, and
out-of-memory errors turned into advice. See docs/reliability.md for the guarantees."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import OutOfMemoryError, RunLockedError, TrainingDivergedError

log = logging.getLogger(__name__)
LOCK_NAME = "run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir/run.lock`` (created with O_EXCL, holding "pid host") while the block runs.

    A lock of a live process (or of another host, which we cannot check) is refused; a lock whose process is
    dead on this host is stale and taken over with a warning. The lock is removed on exit.
    """
    path = Path(run_dir) / LOCK_NAME
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid_s, _, host = path.read_text(encoding="utf-8").strip().partition(" ")
                pid = int(pid_s)
            except (OSError, ValueError):  # unreadable or half-written lock: treat as stale
                pid, host = -1, socket.gethostname()
            if host != socket.gethostname() or (pid > 0 and _pid_alive(pid)):
                raise RunLockedError(
                    f"{run_dir} is in use by another run (pid {pid} on {host or 'this host'}). Wait for it, "
                    f"or use another --out; if that process is gone, delete {path}."
                ) from None
            log.warning("taking over the stale lock %s (pid %s is not running)", path, pid)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me + "\n")
        break
    else:  # pragma: no cover - another process keeps re-creating it
        raise RunLockedError(f"could not take {path}: another process keeps creating it.")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if path.read_text(encoding="utf-8").strip() == me:
                path.unlink()


class StopFlag:
    """Turn the first SIGINT / SIGTERM into a request to stop at the next step boundary.

    The loop polls ``signum``; a second signal raises KeyboardInterrupt at once (no checkpoint then: the last
    one on disk stays intact). Outside the main thread signals cannot be caught and nothing is installed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d received: stopping after this step (send it again to stop now)", signum)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def check_finite(loss: Any, step: int, saved: int, run_dir: Path) -> None:
    """Stop on a NaN / Inf training loss before it reaches the weights, naming the step and the kept checkpoint."""
    if not bool(loss.isfinite()):
        raise TrainingDivergedError(
            f"Loss became {loss.item()} at step {step}; the last good checkpoint (step {saved}) in {run_dir} "
            "is kept. Lower the learning rate or use mixed_precision='no'."
        )


class FiniteGuard:
    """``check_finite`` without a host-device round trip each step: ``add`` notes, on the device, the first step
    whose loss is NaN / Inf; ``check`` reads it and stops with ``check_finite``'s message. Call ``check`` before
    anything that keeps the weights (a checkpoint, the final save): a diverged update is then never written,
    while the steps between checks queue on the device without waiting for each other's loss."""

    def __init__(self) -> None:
        self.first: Any = (
            None  # (step, loss) of the first non-finite loss as device tensors; step -1: none yet
        )

    def add(self, loss: Any, step: int) -> None:
        import torch

        loss = loss.detach().float().reshape(())
        bad = ~torch.isfinite(loss)
        here = torch.where(bad, torch.tensor(step, device=loss.device), torch.tensor(-1, device=loss.device))
        if self.first is None:
            self.first = (here, loss)
            return
        step0, loss0 = self.first
        new = (step0 < 0) & bad
        self.first = (torch.where(new, here, step0), torch.where(new, loss, loss0))

    def check(self, saved: int, run_dir: Path) -> None:
        if self.first is None:
            return
        step, loss = self.first
        if int(step) >= 0:  # the one read of the device
            check_finite(loss, int(step), saved, run_dir)


@contextlib.contextmanager
def out_of_memory(doing: str, advice: str) -> Iterator[None]:
    """Turn running out of accelerator or host memory while ``doing`` something into an ``OutOfMemoryError``
    (a ``DiceError``: one line in the CLI) that says which option to lower."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        raise OutOfMemoryError(f"Out of memory {doing}. {advice}") from e
