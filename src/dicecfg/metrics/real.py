"""Metrics for real models, from local weights only (nothing here downloads).

- FID (Heusel et al. 2017): Frechet distance between Inception-v3 pool features (2048-d) of the generated
  images and reference statistics (``mu``, ``sigma`` in an .npz, or a folder of reference images). The
  Inception network is torch-fidelity's port of the TF-slim weights used by the original FID code.
- CLIP score (Hessel et al. 2021, as torchmetrics defines it): ``100 * max(cos(E_img, E_text), 0)``
  with any transformers ``CLIPModel`` folder (the paper uses ViT-g-14).
- LAION aesthetic score: the improved-aesthetic-predictor MLP on L2-normalised CLIP ViT-L/14 image embeddings.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)
Extractor = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> features (N, D)

HOW = {
    "clip": "a transformers CLIP model folder (config.json, model.safetensors, tokenizer and preprocessor "
    "files), e.g. `hf download openai/clip-vit-large-patch14 --local-dir PATH` on a machine with network",
    "aesthetic": "the LAION aesthetic predictor weights sac+logos+ava1-l14-linearMSE.pth (or a .safetensors "
    "conversion) from christophschuhmann/improved-aesthetic-predictor on GitHub; it scores CLIP ViT-L/14 "
    "embeddings, so also give that CLIP folder (openai/clip-vit-large-patch14)",
    "inception": "torch-fidelity's Inception-v3 weights weights-inception-2015-12-05-6726825d.pth (from "
    "toshas/torch-fidelity release v0.2.0 on GitHub), and `pip install torch-fidelity`",
    "fid_ref": "reference statistics: an .npz with `mu` and `sigma` of 2048-d Inception pool features (the "
    "pytorch-fid / torch-fidelity format) or a folder of reference images (e.g. COCO val2017)",
}


class MissingWeightsError(InputError):
    """A metric's weights were asked for but are not at the given local path."""


def require(path: str | os.PathLike | None, what: str, flag: str) -> Path:
    """Return ``path`` if it exists; otherwise raise a message saying what to download and where to pass it."""
    if path is None or not Path(path).exists():
        where = f"nothing at {path}" if path is not None else "no path given"
        raise MissingWeightsError(
            f"{what}: {where}. Download {HOW[what]}, then pass its local path with {flag}."
        )
    return Path(path)


# ---- CLIP score ---------------------------------------------------------------------------------
class ClipEmbedder:
    """A transformers CLIP model + processor loaded from a local folder (no network)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", flag: str = "--clip") -> None:
        from transformers import AutoProcessor, CLIPModel

        path = require(path, "clip", flag)
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.device = device

    @staticmethod
    def _tensor(out) -> torch.Tensor:  # transformers 5 wraps the projected features in an output object
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def images(self, images: np.ndarray, batch_size: int = 32) -> torch.Tensor:
        """L2-normalised projected image embeddings (N, D)."""
        out = []
        for s in range(0, len(images), batch_size):
            px = self.processor(images=list(images[s : s + batch_size]), return_tensors="pt")["pixel_values"]
            feats = self._tensor(
                self.model.get_image_features(pixel_values=px.to(self.device, self.model.dtype))
            )
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised projected text embeddings (N, D); texts are truncated to the model's length."""
        out = []
        for s in range(0, len(texts), batch_size):
            tok = self.processor.tokenizer(
                list(texts[s : s + batch_size]), padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            feats = self._tensor(self.model.get_text_features(**tok))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)


def clip_score(embedder: ClipEmbedder, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """Per-image CLIP score ``100 * max(cos(image, prompt), 0)``."""
    cos = (embedder.images(images) * embedder.texts(prompts)).sum(-1)
    return (100.0 * cos.clamp(min=0)).numpy().astype(np.float64)


# ---- LAION aesthetic score --------------------------------------------------------------------------
class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head: 1024-128-64-16-1 (dropout is inactive at inference)."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def load(cls, path: str | os.PathLike) -> AestheticMLP:
        """From .safetensors or the published .pth (read with ``weights_only=True``: tensors only)."""
        path = require(path, "aesthetic", "--aesthetic")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        if "layers.0.weight" not in state:
            raise InputError(f"{path} is not an aesthetic-predictor state dict (no layers.0.weight).")
        mlp = cls(state["layers.0.weight"].shape[1])
        mlp.load_state_dict(state, strict=True)
        return mlp.eval()


class AestheticScorer:
    """LAION aesthetic score of images: ``mlp(normalize(CLIP ViT-L/14 image embedding))``."""

    def __init__(self, mlp_path: str | os.PathLike, clip: ClipEmbedder) -> None:
        self.mlp, self.clip = AestheticMLP.load(mlp_path), clip
        dim = self.mlp.layers[0].in_features
        if clip.model.config.projection_dim != dim:
            raise InputError(
                f"The aesthetic head expects {dim}-d CLIP embeddings but the CLIP model gives "
                f"{clip.model.config.projection_dim}-d; it needs CLIP ViT-L/14 (--aesthetic-clip)."
            )

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.mlp(self.clip.images(images)).squeeze(-1).numpy().astype(np.float64)


# ---- FID ---------------------------------------------------------------------------------------------
def inception_extractor(
    weights: str | os.PathLike | None, device: str = "cpu", batch_size: int = 64
) -> Extractor:
    """torch-fidelity's Inception-v3 (2048-d pool features) from a local weights file."""
    path = require(weights, "inception", "--inception")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise MissingWeightsError(f"FID needs torch-fidelity: `pip install torch-fidelity` ({e}).") from e
    # torch-fidelity unpickles its weights file without weights_only; read it safely ourselves first and
    # hand it only a file we wrote from plain tensors.
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    with tempfile.TemporaryDirectory() as d:
        torch.save({k: v for k, v in state.items()}, os.path.join(d, "w.pth"))
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], os.path.join(d, "w.pth")).to(
            device
        )

    @torch.no_grad()
    def extract(images: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])).permute(0, 3, 1, 2)
            out.append(net(x.to(device))[0].double().cpu().numpy())
        return np.concatenate(out)

    return extract


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_from_stats(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (Heusel et al. 2017, eq. 6), the trace of the
    root from the eigenvalues of the symmetric ``S_a^(1/2) S_b S_a^(1/2)``."""
    w, v = np.linalg.eigh(sigma_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    tr = np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.sqrt(np.clip(mid, 0, None)).sum()
    return float(((np.asarray(mu_a) - np.asarray(mu_b)) ** 2).sum() + tr)


def reference_stats(ref: str | os.PathLike | None, extractor: Extractor) -> tuple[np.ndarray, np.ndarray]:
    """``mu``, ``sigma`` from an .npz, or computed from a folder of images (png/jpg, any size)."""
    path = require(ref, "fid_ref", "--fid-ref")
    if path.is_file():
        with np.load(path) as z:
            if not {"mu", "sigma"} <= set(z.files):
                raise InputError(f"{path} must hold arrays `mu` and `sigma` (found {', '.join(z.files)}).")
            return z["mu"], z["sigma"]
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if len(files) < 2:
        raise InputError(f"{path} holds {len(files)} images; FID reference statistics need many (thousands).")
    feats = [extractor(np.asarray(Image.open(f).convert("RGB"))[None]) for f in files]
    return feature_stats(np.concatenate(feats))


def fid(images: np.ndarray, extractor: Extractor, ref_stats: tuple[np.ndarray, np.ndarray]) -> float:
    """FID of ``images`` against reference statistics."""
    return frechet_from_stats(*feature_stats(extractor(images)), *ref_stats)


class RealMetrics:
    """The real-model metrics the user gave weights for; paths are checked when this is built."""

    def __init__(
        self,
        *,
        clip: str | None = None,
        aesthetic: str | None = None,
        aesthetic_clip: str | None = None,
        inception: str | None = None,
        fid_ref: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.clip = ClipEmbedder(clip, device) if clip else None
        self.aesthetic = None
        if aesthetic or aesthetic_clip:
            require(aesthetic, "aesthetic", "--aesthetic")
            same = aesthetic_clip in (None, clip)
            head_clip = (
                self.clip if same and self.clip else ClipEmbedder(aesthetic_clip, device, "--aesthetic-clip")
            )
            self.aesthetic = AestheticScorer(aesthetic, head_clip)
        self.fid = None
        if inception or fid_ref:
            require(fid_ref, "fid_ref", "--fid-ref")
            extractor = inception_extractor(inception, device)
            self.fid = (extractor, reference_stats(fid_ref, extractor))

    @property
    def enabled(self) -> bool:
        return any(m is not None for m in (self.clip, self.aesthetic, self.fid))

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.fid is not None:
            out["fid"] = fid(images, *self.fid)
        if self.clip is not None:
            out["clip_score"] = float(clip_score(self.clip, images, prompts).mean())
        if self.aesthetic is not None:
            out["aesthetic"] = float(self.aesthetic(images).mean())
        return out
