"""Typed exceptions. The CLI turns any ``DiceError`` into a one-line message and exit code 2."""

from __future__ import annotations


class DiceError(Exception):
    """Base class of every error dicecfg raises on purpose (bad input, mismatched files)."""


class SharpenerLoadError(DiceError, OSError):
    """A sharpener file or folder is missing, corrupt, or not a safetensors sharpener."""


class SharpenerMismatchError(DiceError, ValueError):
    """A sharpener does not fit the pipeline it is used with (dimension, token count or family)."""


class UnsupportedPipelineError(DiceError, TypeError):
    """The pipeline's family is not one dicecfg knows."""


class ModelNotFoundError(DiceError, OSError):
    """A model id or path cannot be loaded (offline, missing, or not a diffusers folder)."""


class InputError(DiceError, ValueError):
    """Bad user input: prompts file, image folder, option values."""


class MissingExtraError(DiceError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


class RunLockedError(DiceError, RuntimeError):
    """Another live process holds the run folder's ``run.lock``."""


class TrainingDivergedError(DiceError, FloatingPointError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""


class CheckpointWriteError(DiceError, OSError):
    """A checkpoint could not be written (full disk, failing device); the previous one is intact."""


class OutOfMemoryError(DiceError, RuntimeError):
    """The accelerator ran out of memory; the message says which option to lower."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped training at a step boundary after writing a checkpoint.

    ``signum`` is the signal; the CLI exits with 128 + signum (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step = signum, step


def hub_failure(name: str, error: BaseException, save: str = "pipe.save_pretrained(DIR)") -> str | None:
    """What to tell a user whose hub id did not load (a pipeline or a sharpener), read from the causes of
    ``error`` (the hub client wraps them in OSErrors): no network (or offline mode) and not in the hub cache, or
    no such repository; None when it is neither. ``save``: the other way to make the folder."""
    from huggingface_hub import constants

    names, seen = set(), error
    while seen is not None and len(names) < 20:
        names.add(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    fetch = f"`hf download {name} --local-dir DIR` (or `{save}`)"
    if constants.HF_HUB_OFFLINE or any(k in n for n in names for k in ("Connect", "Timeout", "Offline")):
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        return (
            f"'{name}' is neither a local folder nor reachable on the hub: no network is available here{offline} "
            f"and the hub cache does not hold it. On a machine with network, {fetch}, then pass that folder."
        )
    if names & {"RepositoryNotFoundError", "GatedRepoError"}:
        return (
            f"'{name}' is neither a local folder nor a model on the hub (no such repository, or a private or gated "
            "one: log in with `hf auth login`). Check the name, or pass a local folder."
        )
    return None
