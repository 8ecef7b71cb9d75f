"""Evaluation metrics, each a plain function of uint8 (N, H, W, 3) images.

- :mod:`.world`: shapes-world oracle alignment and a Frechet distance in oracle features;
- :mod:`.fidelity`: PSNR and SSIM against the CFG image of the same prompt and seed;
- :mod:`.real`: FID, CLIP score and the LAION aesthetic score, from local weight files only.
"""

from .fidelity import PSNR_CAP, psnr, ssim

__all__ = ["PSNR_CAP", "psnr", "ssim"]
