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
