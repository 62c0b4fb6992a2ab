"""Losses. NT-Xent is lightly's tested implementation; we only choose its settings.

``nt_xent_masked`` is the one variant lightly lacks: negatives that exclude the other
samples of one's own group (adjacent slices of one brain are near-duplicates, so
pushing them apart as negatives fights the positive pairs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss


def nt_xent(temperature: float = 0.5, distributed: bool = False) -> NTXentLoss:
    """NT-Xent (Chen et al. 2020, SimCLR), called as ``loss(z0, z1)`` with z of shape [B, D].

    With ``distributed`` the negatives are gathered from every rank, so their number
    equals the global batch (2·B·world − 2), as in the paper.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return NTXentLoss(temperature=temperature, gather_distributed=distributed)


def nt_xent_masked(z0: torch.Tensor, z1: torch.Tensor, groups: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent whose negatives exclude every other sample of the anchor's group (both views).

    Args:
        z0, z1: float [B, D] projections of the two views; row i of each is sample i.
        groups: int64 [B] group id per sample (e.g. an inferred subject; never a label).
        temperature: tau > 0.
    Returns:
        The mean over the 2B anchors of -log softmax of the positive among the positive and
        the negatives of other groups. With all groups distinct it equals lightly's NTXentLoss;
        when every z is collinear it is log(1 + 2B - 2m) for groups of m samples each.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z0.shape != z1.shape or groups.shape != z0.shape[:1]:
        raise ValueError(f"need z0, z1 [B, D] and groups [B], got {tuple(z0.shape)}, {tuple(z1.shape)}, "
                         f"{tuple(groups.shape)}")
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n = len(z0)
    anchors = torch.arange(2 * n, device=z.device)
    positive = (anchors + n) % (2 * n)
    both = torch.cat([groups, groups]).to(z.device)
    excluded = both[:, None] == both[None, :]  # itself and its group, the positive re-admitted below
    excluded[anchors, positive] = False
    logits = (z @ z.T / temperature).masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, positive)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sklearn's 'balanced' weights N / (C · n_c) as a tensor [C]; absent classes get weight 0."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
