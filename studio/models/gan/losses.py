"""GAN objectives: hinge losses and BigGAN's off-diagonal orthogonal regularisation.

Hinge (SAGAN, BigGAN-PyTorch losses.py): ``L_D = mean(relu(1 - D(x, y))) + mean(relu(1 + D(G(z), y_f)))`` and
``L_G = -mean(D(G(z), y_f))``. D is pushed to logits >= 1 on real and <= -1 on fake images;
beyond the margin an example gives no gradient.

Orthogonal regularisation (Brock et al. 2019, BigGAN, sec. 3.1): for each weight W reshaped to rows =
output channels, ``R(W) = 0.5 * beta * sum_{i != j} (w_i . w_j)^2``. It penalises correlations between
different filters, not their norms, so any row-rescaled orthogonal matrix scores 0. The 0.5 makes
the gradient ``2 beta ((W W^T) * (1 - I)) W``, exactly what BigGAN-PyTorch adds to the gradient
for the same beta. It is applied to the raw (pre-spectral-norm) weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def discriminator_hinge_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """D's hinge loss terms ``(mean relu(1 - real), mean relu(1 + fake))``; L_D is their sum.

    Logits (B,) of any real value; each term is >= 0 and 0 once D clears the margin.
    """
    return F.relu(1.0 - real_logits).mean(), F.relu(1.0 + fake_logits).mean()


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's hinge loss ``-mean D(G(z))``: lower when D scores the fakes as more real."""
    return -fake_logits.mean()


def orthogonal_regularization(weights: Iterable[torch.Tensor], beta: float) -> torch.Tensor:
    """``0.5 * beta * sum_W ||(W W^T) * (1 - I)||_F^2`` over ``weights`` (each reshaped to rows x rest)."""
    total: torch.Tensor | None = None
    for weight in weights:
        rows = weight.flatten(1)  # (out, in * k * k)
        gram = rows @ rows.T
        off_diagonal = gram - torch.diag_embed(torch.diagonal(gram))
        term = off_diagonal.pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("orthogonal_regularization got no weights")
    return 0.5 * beta * total


def orthogonal_targets(model: nn.Module) -> list[torch.Tensor]:
    """The weights BigGAN regularises: every parameter with >= 2 dims except embedding tables.

    For spectrally normalised layers that is the raw weight (``parametrizations.weight.original``);
    biases, BN parameters and the attention gamma (1-D or scalar) and the shared class embedding
    are left out (BigGAN-PyTorch's blacklist).
    """
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return [p for p in model.parameters() if p.ndim >= 2 and id(p) not in embeddings]
