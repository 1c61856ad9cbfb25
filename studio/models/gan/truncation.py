"""The truncation trick (Brock et al. 2019, BigGAN, sec. 3.1): a normal truncated at ``threshold``.

Definition used here (the paper's, and StudioGAN's ``truncnorm(-psi, psi)``): draw z ~ N(0, I) and
redraw every coordinate with ``|z_k| > threshold`` until all lie inside. Smaller thresholds trade
variety for fidelity; ``threshold = 0`` is the limit z = 0 (one image per class). BigGAN-PyTorch's
TF-Hub port instead scales a (-2, 2)-truncated normal by psi: a different convention.
"""

from __future__ import annotations

import torch

from studio.errors import StudioError

#: the smallest positive threshold: redrawing costs about 1.25 / threshold draws per coordinate (70 ms for a
#: 128-d latent at 0.01 on one CPU thread, minutes at 1e-6), and below it the latent is all but z = 0 (use 0)
MIN_THRESHOLD = 0.01


def truncated_normal(
    size: int, threshold: float | None, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One latent (size,) from ``generator``: N(0, I), or truncated at ``threshold`` by redrawing.

    ``threshold`` None means no truncation; 0 gives zeros. The expected number of redraws per
    coordinate is 1 / P(|z| <= threshold) (about 1.25 / threshold for small thresholds).
    """
    device = generator.device
    if threshold is None:
        return torch.randn(size, generator=generator, device=device, dtype=dtype)
    if threshold < 0:
        raise StudioError(f"truncation threshold must be >= 0 (or None for no truncation), got {threshold}")
    if threshold == 0:
        return torch.zeros(size, device=device, dtype=dtype)
    if threshold < MIN_THRESHOLD:
        raise StudioError(
            f"truncation threshold {threshold} is too small to draw by rejection (about "
            f"{1.25 / threshold:.3g} draws per coordinate); use 0 for z = 0 or at least {MIN_THRESHOLD}"
        )
    z = torch.randn(size, generator=generator, device=device, dtype=dtype)
    outside = z.abs() > threshold
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=generator, device=device, dtype=dtype)
        outside = z.abs() > threshold
    return z
