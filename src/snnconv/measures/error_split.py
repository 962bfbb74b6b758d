"""Layer-wise conversion error (after Deng & Gu 2021, Sec. 3): how far an IF layer's firing rate
r = V_th * count / T is from the ANN activation a of the same layer, split into three parts that
add up exactly (a telescoping sum of mean absolute errors):

    c = clip(a, 0, V_th)                              the activation the threshold can represent
    q = (V_th/T) clip(round(T c / V_th), 0, T)        its best T-step rate (floor for shift "none")

    clipping     = mean |a - c|
    quantisation = mean |a - q| - mean |a - c|        (flooring / rounding error)
    unevenness   = mean |a - r| - mean |a - q|        (spike timing, and error carried in from
                                                       earlier layers)
    total        = mean |a - r| = clipping + quantisation + unevenness

A layer fed a constant current (the first one) fires exactly q, so its unevenness is 0; with
threshold balancing (V_th = y_th) clipping is 0.
"""

from __future__ import annotations

import torch

PARTS = ("clipping", "quantisation", "unevenness")


def quantise(c: torch.Tensor, v_th: torch.Tensor, steps: int, shift: str) -> torch.Tensor:
    """The rate of an IF neuron fed the constant current c for ``steps`` steps (ties round up)."""
    offset = 0.0 if shift == "none" else 0.5
    return torch.floor(c * steps / v_th + offset).clamp_(0, steps) * v_th / steps


def error_sums(
    a: torch.Tensor, count: torch.Tensor, v_th: torch.Tensor, steps: int, shift: str
) -> torch.Tensor:
    """Sums over all elements of (|a - c|, |a - q|, |a - r|) for ANN activations ``a`` and spike
    counts ``count`` (same shape); float64 for exact accumulation over many batches."""
    a, count, v_th = a.double(), count.double(), v_th.double()
    c = torch.minimum(a.clamp(min=0), v_th)
    q = quantise(c, v_th, steps, shift)
    r = count * v_th / steps
    return torch.stack([(a - c).abs().sum(), (a - q).abs().sum(), (a - r).abs().sum()])


def split(sums: torch.Tensor, n: int) -> dict[str, float]:
    """The three parts and the total, as means over ``n`` elements, from ``error_sums`` totals."""
    clip_, quant_, total = (sums / n).tolist()
    return {
        "clipping": clip_,
        "quantisation": quant_ - clip_,
        "unevenness": total - quant_,
        "total": total,
    }
