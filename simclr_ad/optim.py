"""SAM / ASAM around any base optimizer, BatchNorm bypass, and the LR schedule.

SAM (Foret et al., ICLR 2021) minimises the loss at the worst point of a rho-ball:
  1. first_step:  w <- w + e(w),  e = rho * T(w)^2 g / ||T(w) g||  (T = |w| for ASAM, else 1)
  2. recompute the loss and gradients at w + e(w) on the SAME batch and views
  3. second_step: w <- w - e(w), then the base optimizer steps with the new gradients.
ASAM is Kwon et al., ICML 2021 (``adaptive=True``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation wrapping ``base_optimizer_cls(params, **kwargs)``.

    The LR schedule attaches to ``.base_optimizer``; ``state_dict`` is the base optimizer's.
    """

    def __init__(self, params, base_optimizer_cls: type, rho: float = 2.0, adaptive: bool = True, **kwargs):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups: the scheduler sees them
        for group in self.param_groups:
            group.setdefault("rho", rho)
            group.setdefault("adaptive", adaptive)
        self._perturbation: dict[nn.Parameter, torch.Tensor] = {}

    def _scaled_grads(self) -> list[tuple[nn.Parameter, torch.Tensor, dict]]:
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    scale = p.detach().abs() if group["adaptive"] else torch.ones_like(p)
                    out.append((p, scale, group))
        return out

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Climb to w + e(w)."""
        items = self._scaled_grads()
        if not items:
            return
        norm = torch.linalg.vector_norm(torch.stack([
            torch.linalg.vector_norm(scale * p.grad) for p, scale, _ in items]))
        for p, scale, group in items:
            e = scale.pow(2) * p.grad * (group["rho"] / (norm + 1e-12))
            p.add_(e)
            self._perturbation[p] = e
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        """Return to w and take the base optimizer's step with the gradients from w + e(w)."""
        for p, e in self._perturbation.items():
            p.sub_(e)
        self._perturbation.clear()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        if closure is None:
            raise RuntimeError("SAM needs first_step/second_step, or step(closure) that recomputes the loss")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def state_dict(self):  # type: ignore[override]
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:  # type: ignore[override]
        self.base_optimizer.load_state_dict(state_dict)


def base_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer an LR scheduler must wrap (the base of a SAM, or the optimizer itself)."""
    return getattr(optimizer, "base_optimizer", optimizer)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Use batch statistics but leave running BN statistics untouched (SAM's second pass)."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            saved.append((module, module.momentum))
            module.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for module, momentum in saved:
            module.momentum = momentum


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at ``step``: linear warmup from ~0 to 1, then cosine decay to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups_no_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: norms and biases are excluded, as is standard for SimCLR."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
