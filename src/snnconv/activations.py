"""Threshold ReLU: the activation the source ANN is trained with (Deng & Gu 2021, eq. 11)."""

from __future__ import annotations

import math

import torch
from torch import nn


def check_threshold(y_th: float, what: str = "y_th") -> float:
    """Return ``y_th`` as a float; raise ValueError unless it is finite and > 0."""
    try:
        value = float(y_th)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive float, got {y_th!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite float > 0, got {y_th!r}")
    return value


class ThresholdReLU(nn.Module):
    """``y = clip(x, 0, y_th)``; dy/dx = 1 on [0, y_th] and 0 elsewhere (the gradient of clamp).

    Its upper bound becomes the IF threshold V_th = y_th of the converted layer.
    """

    def __init__(self, y_th: float = 1.0):
        super().__init__()
        self.y_th = check_threshold(y_th)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, self.y_th)

    def extra_repr(self) -> str:
        return f"y_th={self.y_th:g}"


def check_levels(levels: int) -> int:
    """Return ``levels`` as an int; raise ValueError unless it is an integer >= 1."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    return levels


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    """floor(x) forward, identity gradient backward (straight-through estimator)."""
    return x + (torch.floor(x) - x).detach()


class QCFS(nn.Module):
    """Quantisation-clip-floor-shift activation (Bu et al., ICLR 2022):

        y = lam * clip(floor(x * L / lam + 1/2) / L, 0, 1)

    with ``L = levels`` and a learnable threshold ``lam`` (one scalar per layer, initialised to
    ``y_th``). The floor's gradient is taken as 1 (straight-through), so dy/dx = 1 on
    [0, lam] and 0 outside, and lam gets the gradient of the clip and the scaling.

    Converted, it becomes IF neurons with V_th = lam whose membrane starts at lam / 2: for a
    constant input current they fire exactly ``y * T / lam`` spikes in T = L steps.
    """

    def __init__(self, levels: int = 8, y_th: float = 1.0):
        super().__init__()
        self.levels = check_levels(levels)
        self.threshold = nn.Parameter(torch.tensor(check_threshold(y_th)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.threshold
        if not torch.is_grad_enabled() or not (x.requires_grad or lam.requires_grad):
            # no gradient: the same operations on one temporary, in place. floor(u) equals the
            # straight-through u + (floor(u) - u) wherever the clip keeps it: for u >= 0,
            # floor(u) - u is exact (Sterbenz, or -u below 1); a negative result clips to +0
            # either way (tests/test_qcfs.py compares the two bit for bit).
            q = x * (self.levels / lam)
            return q.add_(0.5).floor_().div_(self.levels).clamp_(0.0, 1.0).mul_(lam)
        q = _floor_ste(x * (self.levels / lam) + 0.5) / self.levels
        return torch.clamp(q, 0.0, 1.0) * lam

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold.detach()):.4g}"
