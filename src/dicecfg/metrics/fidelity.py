"""CFG fidelity: how close an image is to the CFG image made from the same prompt and seed.

PSNR and SSIM are computed per image on uint8 RGB in [0, 255]. SSIM follows Wang et al. 2004 (eq. 13): an
11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, valid positions only, averaged over the map and
the three channels (the window shrinks for images smaller than 11 px).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0  # dB reported for identical images (keeps means and JSON finite)


def _pair(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, ref = np.asarray(x), np.asarray(ref)
    if x.ndim == 3:
        x, ref = x[None], ref[None]
    if x.shape != ref.shape:
        raise ValueError(f"images {x.shape} and references {ref.shape} differ in shape")
    return x, ref


def psnr(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB, ``10 log10(255^2 / MSE)``, capped at :data:`PSNR_CAP`."""
    x, ref = _pair(x, ref)
    mse = ((x.astype(np.float64) - ref.astype(np.float64)) ** 2).reshape(len(x), -1).mean(1)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian window (size x size), float64."""
    g = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: np.ndarray, ref: np.ndarray, *, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-image mean SSIM (Wang et al. 2004, eq. 13) of uint8 (N, H, W, 3) images against references."""
    x, ref = _pair(x, ref)
    size = min(size, *(s - (1 - s % 2) for s in x.shape[1:3]))  # odd, at most the image side
    a = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
    b = torch.from_numpy(ref.astype(np.float64)).permute(0, 3, 1, 2)
    c = a.shape[1]
    win = gaussian_window(size, sigma).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(1, 2, 3)).numpy()
