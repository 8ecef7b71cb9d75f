"""Training images: folders of captioned images (prompt files are read by ``sampling.prompts``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..runs.io import json_records
from ..sampling.prompts import caption_of, read_text

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class ImageCaptionFolder:
    """A folder of images with captions: ``metadata.jsonl`` (``file_name`` + ``text``, the diffusers/HF
    imagefolder layout) or a sidecar ``NAME.txt`` beside each image. Images are center-cropped and resized."""

    def __init__(self, root: str | Path, resolution: int) -> None:
        self.root, self.resolution = Path(root), resolution
        if not self.root.is_dir():
            raise InputError(f"Image folder {self.root} does not exist.")
        self.items: list[tuple[Path, str]] = []
        meta = self.root / "metadata.jsonl"
        if meta.is_file():
            for n, rec in json_records(read_text(meta), meta):
                if not isinstance(rec.get("file_name"), str):
                    raise InputError(f"{meta}:{n}: missing 'file_name' (the image's path in the folder).")
                self.items.append((self.root / rec["file_name"], caption_of(rec, f"{meta}:{n}")))
        else:
            skipped = 0
            for p in sorted(self.root.iterdir()):
                if p.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                txt = p.with_suffix(".txt")
                if txt.is_file():
                    self.items.append((p, read_text(txt).strip()))
                else:
                    skipped += 1
            if skipped:
                log.warning("%s: skipped %d images without a caption (.txt sidecar)", self.root, skipped)
        if not self.items:
            raise InputError(
                f"{self.root} has no captioned images: add metadata.jsonl (file_name, text) or NAME.txt sidecars."
            )
        listed = len(self.items)
        self.items = [
            (p, c) for p, c in self.items if _readable(p)
        ]  # same folder -> same list: resume is exact
        if len(self.items) < listed:
            log.warning("%s: skipped %d unreadable or missing images", self.root, listed - len(self.items))
        if not self.items:
            raise InputError(
                f"{self.root}: none of its {listed} captioned images can be read (corrupt or missing)."
            )

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """The first 16 hex digits of the sha256 of the listing (file name, size and caption of each usable
        image): another folder's content under the same path gives another fingerprint."""
        listing = [(os.path.relpath(p, self.root), p.stat().st_size, c) for p, c in self.items]
        return hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()[:16]

    @property
    def captions(self) -> list[str]:
        return [c for _, c in self.items]

    def load(self, i: int) -> torch.Tensor:
        """Image i as a (3, R, R) float tensor in [-1, 1]."""
        path = self.items[i][0]
        try:
            img = _to_rgb(Image.open(path))
        except (OSError, ValueError) as e:
            raise InputError(f"Cannot read image {path} ({e}).") from e
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((self.resolution, self.resolution), Image.BICUBIC)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
        return arr.permute(2, 0, 1)

    def batch(self, idx: list[int]) -> torch.Tensor:
        return torch.stack([self.load(i) for i in idx])


def _readable(path: Path) -> bool:
    """Cheap up-front check (header and structure, no full decode) that PIL can open an image."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # PIL raises many types for damaged files (OSError, SyntaxError, struct.error, ...)
        return False


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB as the VAE expects: grey and palette images are expanded, transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
