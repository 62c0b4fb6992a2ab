"""SAM / ASAM around any base optimizer, BatchNorm bypass, and the LR schedule.

SAM (Foret et al., ICLR 2021) minimises the loss at the worst point of a rho-ball:
  1. first_step:  w <- w + e(w),  e = rho * T(w)^2 g / ||T(w) g||  (T = |w| for ASAM, else 1)
  2. recompute the loss and gradients at w + e(w) on the SAME batch and views
  3. second_step: w <- w - e(w), then the base optimizer steps with the new gradients.
ASAM is Kwon et al., ICML 2021 (``adaptive=True``).

LookSAM (Liu et al., CVPR 2022, Algorithm 1), opt-in with ``every=k > 1``: the two passes run
only every k-th step. There the SAM gradient g_s is split along the plain gradient g, and its
orthogonal part g_v = g_s - (g_s . g / ||g||^2) g, the sharpness direction, is kept. The k-1
steps in between cost one forward/backward: they step with g + alpha * (||g|| / ||g_v||) g_v.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation wrapping ``base_optimizer_cls(params, **kwargs)``.

    The LR schedule attaches to ``.base_optimizer``; ``state_dict`` is the base optimizer's
    (with LookSAM, ``every`` > 1, also its step count; its g_v lives in the base state).
    A caller asks ``perturbs_this_step``: if true, first_step / second pass / second_step,
    else one pass and ``reuse_step``. ``step(closure)`` always takes the two passes.
    """

    def __init__(self, params, base_optimizer_cls: type, rho: float = 2.0, adaptive: bool = True,
                 every: int = 1, alpha: float = 0.7, **kwargs):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if every < 1:
            raise ValueError(f"every must be >= 1 (1: full SAM), got {every}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.every, self.alpha = every, alpha  # LookSAM's k and alpha (the paper's 0.7)
        self.steps = 0  # optimizer steps taken, for LookSAM's phase
        self._plain_grads: dict[nn.Parameter, torch.Tensor] = {}  # g at w, kept from first_step for LookSAM
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
            if self.every > 1:  # dropped from p.grad below unless zero_grad is False: then a copy
                self._plain_grads[p] = p.grad if zero_grad else p.grad.clone()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        """Return to w and take the base optimizer's step with the gradients from w + e(w)."""
        for p, e in self._perturbation.items():
            p.sub_(e)
        self._perturbation.clear()
        if self._plain_grads:
            self._keep_sharpness_direction()
        self.base_optimizer.step()
        self.steps += 1
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @property
    def perturbs_this_step(self) -> bool:
        """Whether this step needs SAM's two passes: always for full SAM, every k-th step for LookSAM
        (and whenever no sharpness direction is known yet)."""
        return self.every == 1 or self.steps % self.every == 0 or not self._has_sharpness_direction()

    def _has_sharpness_direction(self) -> bool:
        state = self.base_optimizer.state  # a defaultdict: .get, so that asking adds no entries
        return any("sam_gv" in state.get(p, {}) for g in self.param_groups for p in g["params"])

    @torch.no_grad()
    def _keep_sharpness_direction(self) -> None:
        """g_v = g_s - (g_s . g / ||g||^2) g, over all parameters as one vector (LookSAM, Alg. 1)."""
        pairs = [(p, g) for p, g in self._plain_grads.items() if p.grad is not None]
        dot = sum(torch.sum(p.grad * g) for p, g in pairs)
        g_norm_sq = sum(torch.sum(g * g) for _, g in pairs)
        ratio = dot / (g_norm_sq + 1e-12)
        for p, g in pairs:
            self.base_optimizer.state[p]["sam_gv"] = p.grad - ratio * g  # in the state: saved, resumed
        self._plain_grads.clear()

    @torch.no_grad()
    def reuse_step(self, zero_grad: bool = True) -> None:
        """LookSAM's step between perturbations: g + alpha * (||g|| / ||g_v||) g_v, one pass only.

        ``p.grad`` holds g at w (one backward, BN statistics updated once as in plain SGD).
        """
        state = self.base_optimizer.state
        pairs = [(p, state[p]["sam_gv"]) for g in self.param_groups for p in g["params"]
                 if p.grad is not None and "sam_gv" in state.get(p, {})]
        if pairs:
            grads, directions = [p.grad for p, _ in pairs], [v for _, v in pairs]
            g_norm, v_norm = torch.nn.utils.get_total_norm(grads), torch.nn.utils.get_total_norm(directions)
            torch._foreach_add_(grads, directions, alpha=float(self.alpha * g_norm / (v_norm + 1e-12)))
        self.base_optimizer.step()
        self.steps += 1
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
        state = self.base_optimizer.state_dict()
        if self.every > 1:  # LookSAM's phase; full SAM's dict stays exactly the base optimizer's
            state["sam_steps"] = self.steps
        return state

    def load_state_dict(self, state_dict) -> None:  # type: ignore[override]
        self.base_optimizer.load_state_dict(state_dict)  # ignores the extra "sam_steps"
        self.steps = int(state_dict.get("sam_steps", 0))


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
