"""Losses. NT-Xent is lightly's tested implementation; we only choose its settings."""
from __future__ import annotations

import torch
from lightly.loss import NTXentLoss


def nt_xent(temperature: float = 0.5, distributed: bool = False) -> NTXentLoss:
    """NT-Xent (Chen et al. 2020, SimCLR), called as ``loss(z0, z1)`` with z of shape [B, D].

    With ``distributed`` the negatives are gathered from every rank, so their number
    equals the global batch (2·B·world − 2), as in the paper.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return NTXentLoss(temperature=temperature, gather_distributed=distributed)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sklearn's 'balanced' weights N / (C · n_c) as a tensor [C]; absent classes get weight 0."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
