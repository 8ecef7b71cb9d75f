"""The DICE sharpener: a small network that edits a prompt's text embedding once (docs/method.md, "The method"
and "Sharpener architecture"; arXiv 2502.03726).

    c' = c + alpha * r(c, c_neg)            (first token copied back unchanged)

r: a shared Linear(d -> inner) + ReLU on both c and c_neg; multi-head cross-attention (queries from c,
keys/values from c_neg, no q/k/v biases) with an output projection; ReLU; Linear(inner -> d).
About 1.8M parameters at d=768, 3.2M at d=2048, 5.3M at d=4096.

Our choice (not the paper's): the last layer starts at zero, so an untrained sharpener is exactly
unguided sampling and training starts from the unguided model.

Architectures (``arch``):
- ``paper``: the network above. With c_neg fixed (the empty prompt, as in training) each token's edit is a
  function of that token alone, and the attention output is a convex combination of c_neg's value vectors,
  which bounds what the edit can express.
- ``block`` (ours): one pre-norm transformer block on the prompt's tokens, h = proj_in(c);
  h += SelfAttn(h) (tokens mix); h += CrossAttn(h, c_neg) (the paper's attention, now residual);
  h += MLP(h); r = proj_out(h). Negative prompts still enter through the cross-attention. About 0.9M
  parameters at d=256, inner 256 (the mini model), 3.9M at d=768, inner 512.

Edits that depend on the timestep t (ours; either network), c' = c + alpha * r(c, c_neg, t):
- ``time_edges``: one learned offset of the hidden state h = proj_in(c) per block of timesteps;
- ``time_embed="sinusoidal"``: a sinusoidal embedding of t (``time_width`` wide) -> Linear + SiLU + Linear ->
  a scale and a shift of h, h * (1 + scale(t)) + shift(t), smooth in t (the adaptive normalisation of
  diffusion transformers, on the sharpener's hidden state).
Both start at zero, so they start as the static edit (and an untrained sharpener as the identity edit). A
sharpener without them has no such layers and its config no such keys: its edits are the static ones, exactly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from . import __version__
from .errors import SharpenerLoadError, hub_failure
from .runs.card import card_text, write_card
from .runs.io import atomic_save_tensors, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ARCHS = ("paper", "block")  # see the module docstring
TIME_EMBEDS = ("none", "sinusoidal")  # how the edit depends on a continuous timestep (module docstring)
DEFAULT_TIME_WIDTH = 128  # width of the sinusoidal embedding of t, and of the hidden layer of its MLP
# periods of the sinusoids of t, in timesteps: the longest spans the schedule several times (a slow trend), the
# shortest is one step of a 50-step schedule, so the edit can change from one sampling step to the next but is
# smooth between the timesteps training drew (other step counts and schedulers land between them)
MIN_PERIOD, MAX_PERIOD = 20.0, 4000.0
DEFAULT_NAME = "mini"  # the sharpener shipped with the package (see dicecfg.assets)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")  # refused by name, never opened
# What the hub client raises when it cannot give a file: HTTP errors (no such repo, revision or file, gated),
# a file neither on the hub nor in the local cache (its network errors end as this), offline mode (OSError).
HUB_ERRORS = (HfHubHTTPError, EntryNotFoundError, OSError)
BAD_CONFIG = (TypeError, ValueError, ZeroDivisionError)  # a config.json the network cannot be built from


def resolve_sharpener(name_or_path: str | os.PathLike) -> str:
    """A shipped sharpener's name (``"mini"``, ``"mini-fine"``: its model's) -> its folder; anything else
    unchanged."""
    from .assets import SHARPENERS, shipped_sharpener_dir

    if str(name_or_path) in SHARPENERS:
        return str(shipped_sharpener_dir(str(name_or_path)))
    return str(name_or_path)


class Sharpener(nn.Module, PyTorchModelHubMixin, library_name="dicecfg", tags=["dice", "cfg-distillation"]):
    """Edit r(c, c_neg) of a text embedding. See the module docstring for the equation.

    Args:
        dim: token width d of the text embedding (768 SD1.x, 1024 SD2.x, 2048 SDXL, 4096 PixArt).
        inner_dim: width of the attention block (8 heads x 64 in the paper).
        heads: number of attention heads.
        family: model family the sharpener was trained for (``sd``, ``sdxl``, ``pixart``).
        num_tokens: sequence length of the embedding it was trained on (77 for CLIP).
        copy_first_token: keep token 0 (<SOS> for CLIP) unchanged, as the paper does.
        mask_mode: how an attention mask over padding is treated (PixArt only; ``keep`` or ``open``).
        arch: ``paper`` (the paper's network) or ``block`` (a residual transformer block; module docstring).
        time_edges: timesteps (descending, in (0, 1000)) that cut the schedule into blocks, one edit per block
            (a learned offset each); empty: one edit for every step, the paper's.
        time_embed: ``"none"`` (the paper's static edit) or ``"sinusoidal"``: the edit is a smooth function of the
            timestep (a scale and shift of the hidden state from an MLP of a sinusoidal embedding of t).
        time_width: width of that embedding and of its MLP's hidden layer (an even number).
        sampling: the sampling settings it was tuned for (``alpha``, ``start``, ``stop``, and a ``negative``
            entry for images with a negative prompt), which ``Dice(sharpener)`` uses; written by `dice tune`.
        base_model, base_revision, guidance_scale, train_steps, loss: training metadata.
        dicecfg_version: the version that made it (set by the package; read back from config.json).
    """

    def __init__(
        self,
        dim: int,
        inner_dim: int = 512,
        heads: int = 8,
        *,
        family: str = "sd",
        num_tokens: int = 77,
        copy_first_token: bool = True,
        mask_mode: str = "keep",
        arch: str = "paper",
        time_edges: list[float] | tuple[float, ...] | None = None,
        time_embed: str = "none",
        time_width: int = DEFAULT_TIME_WIDTH,
        sampling: dict[str, float] | None = None,
        base_model: str | None = None,
        base_revision: str | None = None,
        guidance_scale: float | None = None,
        train_steps: int = 0,
        loss: str | None = None,
        dicecfg_version: str = __version__,
    ) -> None:
        super().__init__()
        if not (isinstance(heads, int) and heads >= 1 and isinstance(inner_dim, int) and inner_dim >= 1):
            raise ValueError(f"inner_dim and heads must be integers >= 1 (got {inner_dim}, {heads})")
        if inner_dim % heads:
            raise ValueError(f"inner_dim ({inner_dim}) must be divisible by heads ({heads})")
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)} (got {arch!r})")
        edges = [float(e) for e in (time_edges or [])]
        if any(not 0 < e < 1000 for e in edges) or edges != sorted(set(edges), reverse=True):
            raise ValueError(
                f"time_edges must be distinct timesteps in (0, 1000), descending (got {time_edges})"
            )
        check_time_embed(time_embed, time_width, bool(edges))
        self.config: dict[str, Any] = dict(
            dim=dim,
            inner_dim=inner_dim,
            heads=heads,
            family=family,
            num_tokens=num_tokens,
            copy_first_token=copy_first_token,
            mask_mode=mask_mode,
            arch=arch,
            base_model=base_model,
            base_revision=base_revision,
            guidance_scale=guidance_scale,
            train_steps=train_steps,
            loss=loss,
            dicecfg_version=dicecfg_version,
        )
        if edges:  # written only when set: files of sharpeners without them stay as they were
            self.config["time_edges"] = edges
        if time_embed != "none":  # the same: written only when set
            self.config |= {"time_embed": time_embed, "time_width": time_width}
        if sampling:  # the sampling settings it was tuned for (sampling/methods.py, Dice)
            self.config["sampling"] = json.loads(json.dumps(sampling))
        self.heads = heads
        self.proj_in = nn.Linear(dim, inner_dim)  # shared by c and c_neg
        self.to_q = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(inner_dim, inner_dim, bias=False)
        self.attn_out = nn.Linear(inner_dim, inner_dim)
        if arch == "block":  # (layers are made in this order: the initial weights of a seed depend on it)
            self._add_block_layers(inner_dim)
        self._residual = self._paper_residual if arch == "paper" else self._block_residual  # chosen once
        if edges:  # one learned offset of the hidden state per block of timesteps (zero: the static edit)
            self.time_embed = nn.Parameter(torch.zeros(len(edges) + 1, inner_dim))
        self.proj_out = nn.Linear(inner_dim, dim)
        nn.init.zeros_(self.proj_out.weight)  # untrained sharpener == unguided sampling
        nn.init.zeros_(self.proj_out.bias)
        if time_embed != "none":  # made last: the other layers' initial weights of a seed stay as without it
            self.time_mlp = nn.Sequential(
                nn.Linear(time_width, time_width), nn.SiLU(), nn.Linear(time_width, 2 * inner_dim)
            )
            nn.init.zeros_(self.time_mlp[2].weight)  # scale 0, shift 0: the static edit
            nn.init.zeros_(self.time_mlp[2].bias)

    @property
    def dim(self) -> int:
        return self.config["dim"]

    @property
    def time_dependent(self) -> bool:
        """Whether the edit depends on the timestep (``time_edges`` or ``time_embed``): then it is made per step
        (``Dice`` does), and callers of ``edit`` pass ``t``."""
        return bool(self.config.get("time_edges")) or self.config.get("time_embed", "none") != "none"

    def time_block(self, t: torch.Tensor) -> torch.Tensor:
        """The block of each timestep in ``t`` (B,): 0 for the noisiest (t >= time_edges[0]), and so on."""
        edges = torch.tensor(self.config.get("time_edges") or [], device=t.device, dtype=torch.float32)
        return (t.float()[:, None] < edges[None, :]).sum(1)

    def forward(
        self,
        c: torch.Tensor,
        c_neg: torch.Tensor,
        neg_mask: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the edit r(c, c_neg), shaped like ``c``.

        Args:
            c: the prompt's token embeddings, (B, N, d).
            c_neg: the negative prompt's, (B, M, d) or (1, M, d).
            neg_mask: (B, M) or (1, M), the valid key positions of c_neg (1 = attend), for masked encoders
                (PixArt); None: all valid.
            t: (B,) timesteps (or one for all rows), read only by a sharpener whose edit depends on the timestep
                (``time_edges``: one edit per block of timesteps; ``time_embed``: a smooth function of t).
        """
        dtype = self.proj_in.weight.dtype
        c, c_neg = c.to(dtype), c_neg.to(dtype)
        if c_neg.shape[0] == 1 and c.shape[0] > 1:
            c_neg = c_neg.expand(c.shape[0], -1, -1)
        attn_mask = None
        if neg_mask is not None:
            if neg_mask.shape[0] == 1 and c.shape[0] > 1:
                neg_mask = neg_mask.expand(c.shape[0], -1)
            attn_mask = neg_mask.bool()[:, None, None, :]
        offset = 0.0
        if self.time_dependent:
            if t is None:
                raise ValueError("this sharpener's edit depends on the timestep: pass t")
            t = t.expand(c.shape[0]) if t.dim() == 1 and t.shape[0] == 1 else t.reshape(-1)
            if "time_embed" in self._parameters:
                offset = self.time_embed[self.time_block(t)].to(dtype)[:, None, :]
            else:
                scale, shift = self.time_mlp(sinusoidal(t, self.config["time_width"]).to(dtype)).chunk(2, -1)
                return self._residual(c, c_neg, (scale[:, None, :], shift[:, None, :]), attn_mask)
        return self._residual(c, c_neg, offset, attn_mask)

    # ---- the network variants (``arch``): r(c, c_neg) from the hidden state of c, shaped by the timestep ------
    @staticmethod
    def _timed(h: torch.Tensor, offset) -> torch.Tensor:
        """The hidden state of c at the timestep: h + offset (0 for a static sharpener, a block's offset for
        ``time_edges``), or h * (1 + scale) + shift for ``time_embed`` (``offset`` is then the pair)."""
        if isinstance(offset, tuple):
            scale, shift = offset
            return h * (1 + scale) + shift
        return h + offset

    def _paper_residual(self, c, c_neg, offset, attn_mask) -> torch.Tensor:
        """``paper``: shared projection + ReLU, cross-attention from c to c_neg, ReLU, output projection."""
        h = F.relu(self._timed(self.proj_in(c), offset))
        m = F.relu(self.proj_in(c_neg))
        return self.proj_out(
            F.relu(self.attn_out(self._attend(self.to_q(h), self.to_k(m), self.to_v(m), attn_mask)))
        )

    def _add_block_layers(self, inner_dim: int) -> None:
        """The layers only ``block`` has (its cross-attention reuses the paper's to_q/to_k/to_v/attn_out)."""
        self.norm_self, self.norm_cross, self.norm_kv, self.norm_mlp = (
            nn.LayerNorm(inner_dim) for _ in range(4)
        )
        self.self_qkv = nn.Linear(inner_dim, 3 * inner_dim, bias=False)
        self.self_out = nn.Linear(inner_dim, inner_dim)
        self.mlp = nn.Sequential(
            nn.Linear(inner_dim, 2 * inner_dim), nn.GELU(), nn.Linear(2 * inner_dim, inner_dim)
        )

    def _block_residual(self, c, c_neg, offset, attn_mask) -> torch.Tensor:
        """``block``: one pre-norm transformer block on the prompt's tokens (self-attention, the paper's
        cross-attention to c_neg, MLP, each residual), then the output projection."""
        h = self._timed(self.proj_in(c), offset)
        m = self.norm_kv(self.proj_in(c_neg))
        q, k, v = self.self_qkv(self.norm_self(h)).chunk(3, dim=-1)
        h = h + self.self_out(self._attend(q, k, v, None))  # the prompt's tokens mix
        x = self.norm_cross(h)
        h = h + self.attn_out(self._attend(self.to_q(x), self.to_k(m), self.to_v(m), attn_mask))
        h = h + self.mlp(self.norm_mlp(h))
        return self.proj_out(h)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Multi-head scaled dot-product attention of (B, N, inner) queries over (B, M, inner) keys/values."""
        b, n, _ = q.shape
        q, k, v = (x.view(b, x.shape[1], self.heads, -1).transpose(1, 2) for x in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return a.transpose(1, 2).reshape(b, n, -1)

    def edit(
        self,
        c: torch.Tensor,
        c_neg: torch.Tensor,
        alpha: float = 1.0,
        neg_mask: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """c' = c + alpha * r(c, c_neg), token 0 copied back when ``copy_first_token``. Same dtype as c.

        Args:
            c, c_neg, neg_mask, t: as for ``forward``.
            alpha: strength of the edit; 0 returns ``c`` unchanged.
        """
        delta = self(c, c_neg, neg_mask, t).to(c.dtype)
        if self.config["copy_first_token"]:
            delta = torch.cat([torch.zeros_like(delta[:, :1]), delta[:, 1:]], dim=1)
        return c + alpha * delta

    # ---- save / load (safetensors + config.json, never pickle) -------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        atomic_save_tensors(
            save_directory / WEIGHTS_NAME,
            self.state_dict(),
            metadata={"format": "pt", "dicecfg_config": json.dumps(self.config, sort_keys=True)},
        )
        atomic_write_json(save_directory / CONFIG_NAME, self.config)
        write_card(save_directory, self.config, self.num_params)  # README.md (runs/card.py)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def model_card(self, heldout: tuple[tuple[int, float], tuple[int, float]] | None = None) -> str:
        """The README of this sharpener (``runs/card.py``); ``heldout``: the first and last (step, held-out loss)
        of its run."""
        return card_text(self.config, self.num_params, heldout)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card ``push_to_hub`` uploads: the same honest card (no loss: that lives in the run folder)."""
        return ModelCard(self.model_card())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike = DEFAULT_NAME, **kwargs):
        """Load a sharpener; never unpickles anything.

        Args:
            pretrained_model_name_or_path: a folder holding config.json and model.safetensors (as ``dice train``
                and ``save_pretrained`` write it), a hub id, or ``"mini"`` (the shipped sharpener).
            **kwargs: passed to huggingface_hub's loader (``revision``, ``cache_dir``, ``token``, ...).

        Raises ``SharpenerLoadError`` with one line naming the problem (a pickle, a file, a missing or damaged
        file, a hub id that could not be fetched).
        """
        name = resolve_sharpener(pretrained_model_name_or_path)
        path = Path(name)
        if path.is_dir():
            check_folder(path)
            try:
                return super().from_pretrained(name, **kwargs)
            except BAD_CONFIG as e:
                raise SharpenerLoadError(f"{name}/{CONFIG_NAME} does not describe a sharpener ({e}).") from e
        check_not_a_file(path)
        if path.exists() or name.startswith((".", "/", "~", os.sep)) or name.count("/") > 1:
            raise SharpenerLoadError(f"No sharpener at {path}: the folder does not exist.")
        return cls.from_pretrained(hub_folder(name, kwargs), **kwargs)  # "owner/name": a hub id

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision,
        cache_dir,
        force_download,
        local_files_only,
        token,
        map_location: str = "cpu",
        **model_kwargs,
    ):
        model_file = os.path.join(model_id, WEIGHTS_NAME)  # a folder: from_pretrained fetches hub ids first
        model = cls(**model_kwargs)
        model.load_weights(model_file, map_location)
        return model.eval()

    def load_weights(self, model_file: str | os.PathLike, map_location: str = "cpu") -> None:
        """Load a safetensors state dict strictly, with clear errors for damaged or mismatched files."""
        try:
            state = load_file(str(model_file), device=map_location)
        except (SafetensorError, OSError, ValueError) as e:
            raise SharpenerLoadError(
                f"{model_file} is not a readable safetensors file ({e}). It may be truncated or corrupt; "
                "re-copy it or retrain. (Pickled .pt/.bin files are never loaded.)"
            ) from e
        own = self.state_dict()
        if set(state) != set(own):
            raise SharpenerLoadError(
                f"{model_file} does not hold a sharpener: expected tensors {sorted(own)}, found {sorted(state)}."
            )
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise SharpenerLoadError(
                    f"{model_file}: tensor {k} has shape {tuple(v.shape)} but config.json says "
                    f"{tuple(own[k].shape)} (dim={self.dim}). The weights and config do not match."
                )
        self.load_state_dict(state, strict=True)


def sinusoidal(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) timesteps -> (B, width) float32 features [cos(2 pi t / p_k), sin(2 pi t / p_k)], the periods p_k on
    a geometric scale from MAX_PERIOD down to MIN_PERIOD timesteps (the denoisers' timestep embedding, with
    periods chosen for a smooth edit)."""
    half = width // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    periods = MAX_PERIOD * (MIN_PERIOD / MAX_PERIOD) ** k
    angles = t.float()[:, None] * (2 * math.pi / periods)[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def check_time_embed(time_embed: Any, time_width: Any, has_edges: bool) -> None:
    """Refuse time options the network cannot be built from, naming the fix (``ValueError``: a config.json
    that holds them is refused as not describing a sharpener)."""
    if time_embed not in TIME_EMBEDS:
        raise ValueError(f"time_embed must be one of {', '.join(TIME_EMBEDS)} (got {time_embed!r})")
    if time_embed == "none":
        return
    if isinstance(time_width, bool) or not isinstance(time_width, int) or time_width < 2 or time_width % 2:
        raise ValueError(
            f"time_width must be an even integer >= 2 (got {time_width!r}), e.g. {DEFAULT_TIME_WIDTH}"
        )
    if has_edges:
        raise ValueError(
            "time_edges and time_embed are two ways of making the edit depend on the timestep; give one of them"
        )


HUB_OPTIONS = ("revision", "cache_dir", "force_download", "token", "local_files_only")  # snapshot_download's


def hub_folder(name: str, kwargs: dict[str, Any]) -> str:
    """The local folder of the hub repository ``name`` (its config.json and model.safetensors, fetched or from
    the hub cache); pops the hub client's options out of ``kwargs``. Raises ``SharpenerLoadError`` with one line
    when the hub cannot give it (no network here: say so and how to fetch it elsewhere)."""
    from huggingface_hub import snapshot_download

    options = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs}
    try:
        return snapshot_download(repo_id=name, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **options)
    except HFValidationError as e:  # an id the hub client refuses
        raise SharpenerLoadError(f"'{name}' is neither a sharpener folder nor a hub id ({e}).") from e
    except HUB_ERRORS as e:
        why = hub_failure(name, e, save="sharpener.save_pretrained(DIR)")
        raise SharpenerLoadError(
            why
            or f"No sharpener folder '{name}' here, and the hub did not give one ({type(e).__name__}). "
            "Check the path; hub ids need network access."
        ) from e


def check_not_a_file(path: Path) -> None:
    """Refuse a file where a sharpener folder belongs, a pickled checkpoint above all (never opened)."""
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise SharpenerLoadError(
            f"{path} is a pickled PyTorch file; dicecfg never loads pickles (loading one can run code). "
            f"Pass a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, or convert it where you trust it."
        )
    if path.is_file():
        raise SharpenerLoadError(
            f"{path} is a file; a sharpener is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(as written by `dice train` or Sharpener.save_pretrained). Pass the folder."
        )


def check_folder(path: Path) -> None:
    """Refuse a folder that does not hold a sharpener: a missing file, a config.json that is not JSON or not a
    sharpener's (the weights are checked when they load: ``Sharpener.load_weights``)."""
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (path / f).is_file()]
    if missing:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        note = f" It holds pickled files ({', '.join(pickles)}), which are never loaded." if pickles else ""
        raise SharpenerLoadError(
            f"{path} is not a sharpener folder: missing {', '.join(missing)}.{note} "
            "Point to the output folder of `dice train` (it holds config.json and model.safetensors)."
        )
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SharpenerLoadError(f"{path / CONFIG_NAME} is not valid JSON ({e}).") from e
    if not isinstance(config, dict) or "dim" not in config:
        raise SharpenerLoadError(f"{path / CONFIG_NAME} does not describe a sharpener (no 'dim').")
