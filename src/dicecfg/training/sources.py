"""Where the noisy inputs x_t of distillation come from.

- ``ImageSource`` (the paper's choice): real captioned images, VAE-encoded, noised at a uniformly drawn
  training timestep.
- ``TeacherSource`` (prompt-only default): a pool of the teacher's own CFG samples x_0 (made once per run and
  stored in the run folder), re-noised at a fresh uniformly drawn timestep and fresh noise every step.
  Why this and not states along the sampling trajectory: it keeps the paper's training distribution
  q(x_t | x_0) over all 1000 timesteps, with the CFG model standing in for the data; it does not tie training
  to one sampler or step count; and each costly teacher sample is reused under many (t, noise) draws.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..families import Cond, Family
from ..runs.folder import POOL_FILE
from ..runs.io import atomic_save_tensors, load_tensors

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, Cond]  # x0, noise, t, cond
TrainBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, Cond, Cond | None]  # ... and c_neg (None: "")
T_WEIGHTINGS = ("uniform", "noisy", "steps")  # how training timesteps are drawn (``XtSource.timesteps``)


def add_noise(
    alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM forward process)."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: on CUDA through pinned memory with a
    non-blocking copy (a copy from pageable memory waits for the device's queue to drain first, so a training
    step could not be queued while the last one runs). Elsewhere a plain ``.to``."""
    if device.type != "cuda":
        return x.to(device)
    return x.contiguous().pin_memory().to(device, non_blocking=True)


def train_alphas(pipe: Any, device: torch.device) -> torch.Tensor:
    """abar_t of the model's training noise schedule (DDPM's), as float32 on ``device``."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.to(device, torch.float32)


def timestep_window(cfg: Any, num_timesteps: int) -> tuple[int, int]:
    """The training timesteps [lo, hi) of ``cfg.t_range`` (fractions of the schedule; at least one step)."""
    lo_f, hi_f = getattr(cfg, "t_range", (0.0, 1.0))
    lo = min(int(round(lo_f * num_timesteps)), num_timesteps - 1)
    return lo, max(lo + 1, int(round(hi_f * num_timesteps)))


def schedule_timesteps(pipe: Any, steps: int) -> list[float]:
    """The timesteps of a ``steps``-step sampling schedule of the model's own scheduler (a copy: the pipeline's
    scheduler is left as it is)."""
    import copy

    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    return [float(t) for t in sched.timesteps]


class TextCache:
    """Prompt -> encoded Cond on the device; the text encoder is frozen, so each prompt is encoded once.

    A prompt's embedding must not depend on which other prompts happened to be encoded with it (matrix kernels
    round differently at other batch sizes, and differently again on other CPUs), or a resumed run would drift
    from an uninterrupted one. So the texts a run can meet (``known``: its prompts, negative prompts and "")
    are cut into fixed chunks of ``chunk`` texts, in sorted order, and a missing text is always encoded with
    its whole chunk; any other text is encoded alone."""

    def __init__(self, pipe: Any, fam: Family, known: list[str] | None = None, chunk: int = 32,
                 limit: int = 100_000) -> None:  # fmt: skip
        self.pipe, self.fam, self.limit, self.store = pipe, fam, limit, {}
        self.order = sorted(set(known or []))
        self.where = {t: i for i, t in enumerate(self.order)}
        self.chunk = chunk

    def _group(self, text: str) -> list[str]:
        i = self.where.get(text)
        if i is None:
            return [text]
        first = i - i % self.chunk
        return self.order[first : first + self.chunk]

    def __call__(self, texts: list[str]) -> Cond:
        for text in texts:
            if text not in self.store:
                group = self._group(text)
                if len(self.store) + len(group) > self.limit:
                    self.store.clear()
                enc = self.fam.encode(self.pipe, group)
                self.store.update({t: enc.index(slice(i, i + 1)) for i, t in enumerate(group)})
        return Cond.cat([self.store[t] for t in texts])


class XtSource:
    """Base: per-step randomness from a generator seeded by (seed, step); the forward noising process.

    Data-parallel (``world`` > 1 processes) and gradient accumulation: every rank draws the whole global batch
    of step k (``batch_size`` x ``world`` x ``grad_accum``) from the (seed, k) generator, keeps its own slice
    ``rank`` and yields it in ``grad_accum`` micro-batches of ``batch_size``, so the ranks see different data
    and noise, a function of (seed, rank, k), and together exactly the batch that one process with the global
    batch size draws at step k (one timestep for all of it when ``shared_timestep``).
    """

    def __init__(
        self,
        pipe: Any,
        fam: Family,
        cfg: Any,
        shape: tuple[int, int, int],
        rank: int = 0,
        world: int = 1,
        texts: list[str] | None = None,
    ) -> None:
        self.pipe, self.fam, self.cfg, self.shape = pipe, fam, cfg, shape
        self.rank, self.world = rank, world
        self.per_rank = cfg.batch_size * cfg.grad_accum  # samples of one rank per optimizer step
        self.global_batch = self.per_rank * world  # samples of all ranks per optimizer step
        self.infer_batch = cfg.batch_size * world  # gradient-free passes: teacher pool, held-out
        self.device = pipe._execution_device
        self.alphas_cumprod = train_alphas(pipe, self.device)
        self.num_timesteps = len(self.alphas_cumprod)
        self.t_lo, self.t_hi = timestep_window(cfg, self.num_timesteps)
        self.t_choices = self._step_timesteps() if getattr(cfg, "t_weighting", "uniform") == "steps" else None
        self.text = TextCache(pipe, fam, [*(texts or []), *cfg.negative_prompts, ""])

    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 7 + salt)

    def mine(self) -> slice:
        """This rank's slice of a global batch."""
        return slice(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return add_noise(self.alphas_cumprod, x0, noise, t)

    def draw(self, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and timesteps for n samples, on the CPU (one t shared by all n when cfg.shared_timestep)."""
        noise = torch.randn((n, *self.shape), generator=g)
        k = 1 if self.cfg.shared_timestep else n
        t = self.timesteps(g, k).expand(n)
        return noise, t

    def timesteps(self, g: torch.Generator, k: int) -> torch.Tensor:
        """k training timesteps in [t_lo, t_hi), drawn as ``cfg.t_weighting`` says: ``uniform`` (the paper's),
        ``noisy`` (density rising linearly from the clean end to the noisy one: t = lo + floor((hi - lo) sqrt(u)),
        3/4 of the draws in the noisier half), ``steps`` (uniform over the timesteps of a ``t_steps``-step
        sampling schedule inside the window: training sees exactly the timesteps sampling will)."""
        kind = getattr(self.cfg, "t_weighting", "uniform")
        if kind == "noisy":
            u = torch.rand(k, generator=g, dtype=torch.float64)
            return self.t_lo + ((self.t_hi - self.t_lo) * u.sqrt()).floor().long().clamp(
                max=self.t_hi - self.t_lo - 1
            )
        if kind == "steps":
            return self.t_choices[torch.randint(0, len(self.t_choices), (k,), generator=g)]
        return torch.randint(self.t_lo, self.t_hi, (k,), generator=g)

    def _step_timesteps(self) -> torch.Tensor:
        """The (integer) timesteps of a ``t_steps`` sampling schedule inside [t_lo, t_hi); refused when none is."""
        steps = self.cfg.t_steps
        inside = sorted(
            {int(round(t)) for t in schedule_timesteps(self.pipe, steps) if self.t_lo <= t < self.t_hi}
        )
        if not inside:
            raise InputError(
                f"t_weighting='steps': none of the {steps} sampling steps' timesteps lies in t_range "
                f"{list(self.cfg.t_range)} (timesteps [{self.t_lo}, {self.t_hi})). Widen --t-range or raise --t-steps."
            )
        return torch.tensor(inside, dtype=torch.long)

    def split(self, n: int) -> tuple[list[int], list[int]]:
        """Train / held-out indices: hold out the last eval_pairs items when there are enough of them."""
        e = self.cfg.eval_pairs
        if n >= 4 * e:
            return list(range(n - e)), list(range(n - e, n))
        log.warning("only %d items: held-out evaluation reuses training items with fixed noise", n)
        return list(range(n)), [i % n for i in range(e)]

    def fixed_eval(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out noise and timesteps spread evenly over the trained part of the schedule."""
        g = self.generator(-1, salt=1)
        noise = torch.randn((n, *self.shape), generator=g).to(self.device)
        t = torch.linspace(self.t_lo, self.t_hi - 1, n).round().long().to(self.device)
        return noise, t

    def negatives(self, step: int) -> list[str] | None:
        """Per-sample c_neg texts of this rank's slice of step ``step``: with probability negative_prob a random
        entry of negative_prompts, else "" (None: all ""). Drawn for the global batch from a generator seeded by
        the step, so resume is exact; the held-out evaluation always uses ""."""
        negs, p = self.cfg.negative_prompts, self.cfg.negative_prob
        if not negs or p <= 0:
            return None
        g = self.generator(step, salt=3)
        use = (torch.rand(self.global_batch, generator=g) < p).tolist()
        pick = torch.randint(0, len(negs), (self.global_batch,), generator=g).tolist()
        return [negs[k] if u else "" for u, k in zip(use, pick, strict=True)][self.mine()]

    def train_batches(self, step: int) -> Iterator[TrainBatch]:
        """This rank's slice of the global batch of step ``step``, in grad_accum micro-batches of batch_size."""
        g = self.generator(step)
        pick = torch.randint(0, self.num_train, (self.global_batch,), generator=g)
        noise, t = self.draw(g, self.global_batch)
        negs, mine, b = self.negatives(step), self.mine(), self.cfg.batch_size
        pick, noise, t = pick[mine].tolist(), noise[mine], t[mine]
        for s in range(0, self.per_rank, b):
            x0, texts = self.train_items(pick[s : s + b])
            neg = None if negs is None else self.text(negs[s : s + b])
            dev = self.device
            yield x0, to_device(noise[s : s + b], dev), to_device(t[s : s + b], dev), self.text(texts), neg

    @property
    def num_train(self) -> int:
        """Number of training items (step batches pick from them uniformly, with replacement)."""
        raise NotImplementedError

    def train_items(self, pick: list[int]) -> tuple[torch.Tensor, list[str]]:
        """x_0 on the device and texts of the picked training items."""
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError


class TeacherSource(XtSource):
    def __init__(
        self,
        pipe,
        fam,
        prompts: list[str],
        neg: Cond,
        cfg,
        run_dir: Path,
        resolution: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        f = pipe.vae_scale_factor
        shape = (fam.latent_channels(pipe), resolution // f, resolution // f)
        super().__init__(pipe, fam, cfg, shape, rank, world, texts=prompts)
        self.prompts = prompts
        train_idx, eval_idx = self.split(len(prompts))
        g = self.generator(-1, salt=2)
        order = torch.tensor(train_idx)[torch.randperm(len(train_idx), generator=g)]
        self.pool_prompts = [prompts[int(order[i % len(order)])] for i in range(cfg.teacher_pool)]
        self.eval_prompts = [prompts[i] for i in eval_idx]
        path = run_dir / POOL_FILE
        if path.is_file():
            self.pool, self.eval_x0 = self._load_pool(path)
        else:
            self.pool = self._sample(self.pool_prompts, neg, resolution, seed_base=0, what="teacher pool")
            self.eval_x0 = self._sample(self.eval_prompts, neg, resolution, seed_base=10**9, what="held-out")
            atomic_save_tensors(path, {"pool": self.pool, "eval": self.eval_x0})
        self.eval_noise, self.eval_t = self.fixed_eval(len(self.eval_prompts))

    def _load_pool(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored pool and held-out samples; a damaged file is named, with how to rebuild it."""
        from safetensors import SafetensorError

        try:
            saved = load_tensors(path, device=str(self.device))
            pool, eval_x0 = saved["pool"], saved["eval"]
        except (SafetensorError, OSError, KeyError) as e:
            raise InputError(
                f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no data'}). "
                "Delete it and run the same command again: it is rebuilt from the same seeds (the same CFG "
                "samples) and training resumes from the checkpoint."
            ) from e
        if pool.shape[0] != len(self.pool_prompts) or tuple(pool.shape[1:]) != self.shape:
            raise InputError(
                f"{path} holds {tuple(pool.shape)} samples, not {(len(self.pool_prompts), *self.shape)}. "
                "Delete it and run the same command again to rebuild it."
            )
        return pool, eval_x0

    def _sample(
        self, prompts: list[str], neg: Cond, resolution: int, seed_base: int, what: str
    ) -> torch.Tensor:
        from tqdm.auto import tqdm

        from ..sampling.generate import generators, sample_batch
        from ..sampling.methods import CFG

        out, bs = [], self.infer_batch
        for s in tqdm(
            range(0, len(prompts), bs), desc=f"CFG samples ({what})", disable=not self.cfg.progress
        ):
            batch = prompts[s : s + bs]
            gens = generators(self.device, [self.cfg.seed + seed_base + s + i for i in range(len(batch))])
            lat, _ = sample_batch(
                self.pipe,
                self.fam,
                CFG(self.cfg.guidance_scale),
                self.text(batch),
                neg.expand(len(batch)),
                gens,
                num_inference_steps=self.cfg.teacher_steps,
                height=resolution,
                width=resolution,
                output_type="latent",
            )
            out.append(lat.float())
        return torch.cat(out)

    @property
    def num_train(self) -> int:
        return len(self.pool)

    def train_items(self, pick: list[int]) -> tuple[torch.Tensor, list[str]]:
        return self.pool[to_device(torch.tensor(pick), self.device)], [self.pool_prompts[i] for i in pick]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        for s in range(0, len(self.eval_prompts), batch_size):
            sl = slice(s, s + batch_size)
            yield self.eval_x0[sl], self.eval_noise[sl], self.eval_t[sl], self.text(self.eval_prompts[sl])


class ImageSource(XtSource):
    def __init__(self, pipe, fam, folder, cfg, run_dir: Path, rank: int = 0, world: int = 1) -> None:
        f = pipe.vae_scale_factor
        r = folder.resolution
        super().__init__(
            pipe, fam, cfg, (fam.latent_channels(pipe), r // f, r // f), rank, world, folder.captions
        )
        self.folder = folder
        self.train_idx, self.eval_idx = self.split(len(folder))
        self.eval_x0 = self._encode(self.eval_idx)
        self.eval_noise, self.eval_t = self.fixed_eval(len(self.eval_idx))
        self.eval_text = [folder.captions[i] for i in self.eval_idx]

    @torch.no_grad()
    def _encode(self, idx: list[int]) -> torch.Tensor:
        return self.fam.encode_images(self.pipe, self.folder.batch(idx)).float()

    @property
    def num_train(self) -> int:
        return len(self.train_idx)

    def train_items(self, pick: list[int]) -> tuple[torch.Tensor, list[str]]:
        idx = [self.train_idx[i] for i in pick]
        return self._encode(idx), [self.folder.captions[i] for i in idx]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        for s in range(0, len(self.eval_idx), batch_size):
            sl = slice(s, s + batch_size)
            yield self.eval_x0[sl], self.eval_noise[sl], self.eval_t[sl], self.text(self.eval_text[sl])
