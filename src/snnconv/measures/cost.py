"""Synaptic operations, MACs and an energy estimate.

Fan-out of a neuron: the number of synapses through which its output reaches the next IF layers
(or the readout), i.e. the paths through the linear ops between them, each weight that is not
zero one synapse (pooling windows and identity/residual connections count as synapses of weight
one). It is exact at conv borders and strides: it is computed as L~^T 1, the transpose of the
linear map L~ whose weights are replaced by their non-zero indicators, by one backward pass.

    SOPs (SNN)  = sum over IF layers and neurons of spike count x fan-out        (accumulates)
    MACs (SNN)  = sum over input elements of fan-out, once: the first layer's input is analog and
                  constant over time, so its current is computed once
    MACs (ANN)  = sum over the input and every activation of fan-out (one dense pass)
    energy      = MACs x e_mac + SOPs x e_ac   (defaults: snnconv.options.E_MAC_PJ and E_AC_PJ)
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from snnconv.conversion.prepare import WithConstants
from snnconv.options import E_AC_PJ, E_MAC_PJ

INPUT = "input"


def _indicator(w: torch.Tensor) -> torch.Tensor:
    return (w != 0).to(torch.float64)


def _window_sizes(size: int, out: int) -> torch.Tensor:
    """Lengths of the windows adaptive pooling uses along one axis."""
    i = torch.arange(out)
    return ((i + 1) * size + out - 1) // out - (i * size) // out


POOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")


def _sum_pool(avg_pool, args, kwargs) -> torch.Tensor:
    """Average pooling turned into sum pooling (each window member a weight-one synapse)."""
    bound = dict(zip(POOL_ARGS, args), **kwargs)
    if avg_pool is F.avg_pool2d:
        return F.avg_pool2d(**{**bound, "divisor_override": 1})
    k = bound["kernel_size"]
    return F.avg_pool1d(**bound) * (k if isinstance(k, int) else k[0])


def _adaptive_sum(x: torch.Tensor, output_size) -> torch.Tensor:
    """Adaptive average pooling times each window's size."""
    pool = F.adaptive_avg_pool2d if x.dim() == 4 else F.adaptive_avg_pool1d
    y = pool(x, output_size)
    sizes = [_window_sizes(s, o) for s, o in zip(x.shape[2:], y.shape[2:])]
    window = sizes[0] if len(sizes) == 1 else sizes[0][:, None] * sizes[1][None, :]
    return y * window.to(y.dtype)


def _interpolate_indicator(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``F.interpolate(x, ...)`` with its weights replaced by their non-zero indicators. Every
    mode is separable: along each spatial axis d the output is M_d applied to the input, so the
    weight of (output, input) is the product of the axes' weights, non-zero iff each factor is.
    M_d is read off by interpolating, with the same arguments, one impulse per index along d
    that is constant along the other axes (each mode's weights sum to 1 along every axis, so
    the other axes contribute a factor 1)."""
    spatial = x.shape[2:]
    for d, n in enumerate(spatial):
        impulse = torch.eye(n, dtype=x.dtype).reshape(
            n, 1, *[n if a == d else 1 for a in range(len(spatial))]
        )
        impulse = impulse.expand(n, 1, *[n if a == d else s for a, s in enumerate(spatial)])
        response = F.interpolate(impulse.contiguous(), *args, **kwargs)
        along_d = response[
            (slice(None), 0, *[slice(None) if a == d else 0 for a in range(len(spatial))])
        ]
        matrix = _indicator(along_d.T)  # [out_d, in_d]
        x = torch.movedim(torch.movedim(x, 2 + d, -1) @ matrix.T, -1, 2 + d)
    return x


def _on_path(t) -> bool:
    """Whether ``t`` carries the fan-out (derived from a leaf), not a constant of the network."""
    return torch.is_tensor(t) and t.requires_grad and not isinstance(t, nn.Parameter)


def _scaled(a, b, divide: bool) -> torch.Tensor:
    """a·b or a/b, one operand on the fan-out's path and the other a constant (a scalar or a
    tensor that may broadcast): the path times the constant's non-zero pattern (a divisor
    counts wherever it is)."""
    if not divide and not _on_path(a):
        a, b = b, a
    if torch.is_tensor(b):
        return a * (torch.ones_like(b, dtype=a.dtype) if divide else _indicator(b))
    return a if divide or b != 0 else a * 0.0


_CONV_MODULES = {
    nn.Conv1d: F.conv1d,
    nn.Conv2d: F.conv2d,
    nn.Conv3d: F.conv3d,
    nn.ConvTranspose1d: F.conv_transpose1d,
    nn.ConvTranspose2d: F.conv_transpose2d,
    nn.ConvTranspose3d: F.conv_transpose3d,
}
_WEIGHTED = (F.linear, *_CONV_MODULES.values())


def _conv_module(m: nn.Module, x: torch.Tensor, output_size=None) -> torch.Tensor:
    """A (transposed) convolution module's map with indicator weights and no bias."""
    w = _indicator(m.weight)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        k = len(m.kernel_size)
        pad = m._output_padding(x, output_size, m.stride, m.padding, m.kernel_size, k, m.dilation)
        return _CONV_MODULES[type(m)](x, w, None, m.stride, m.padding, pad, m.groups, m.dilation)
    if m.padding_mode != "zeros":
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        return _CONV_MODULES[type(m)](x, w, None, m.stride, 0, m.dilation, m.groups)
    return _CONV_MODULES[type(m)](x, w, None, m.stride, m.padding, m.dilation, m.groups)


class _FanOut(fx.Interpreter):
    """Runs an ANN graph as its indicator map: weights -> 1[w != 0], averages -> sums, biases
    dropped; each activation's input current is summed into the objective and its output is a
    fresh leaf of ones, so d(objective)/d(leaf) is the fan-out of that layer's neurons."""

    def __init__(self, gm: fx.GraphModule, layers: set[str]):
        super().__init__(gm)
        self.layers, self.leaves, self.objective = layers, {}, 0.0

    def _leaf(self, name: str, like: torch.Tensor) -> torch.Tensor:
        leaf = torch.ones_like(like, dtype=torch.float64, requires_grad=True)
        self.leaves[name] = leaf
        return leaf

    def placeholder(self, target, args, kwargs):
        return self._leaf(INPUT, super().placeholder(target, args, kwargs))

    def output(self, target, args, kwargs):
        self.objective = self.objective + args[0].sum()
        return args[0]

    def run_node(self, n: fx.Node):
        if n.name in self.layers:
            current = self.env[n.args[0]]
            self.objective = self.objective + current.sum()
            return self._leaf(n.name, current)
        return super().run_node(n)

    def call_module(self, target, args, kwargs):
        m, x = self.fetch_attr(target), args[0]
        if isinstance(m, WithConstants):  # a call with constant weights: run as that call
            args, kwargs = m.arguments(*args)
            call = self.call_method if m.op == "call_method" else self.call_function
            return call(m.target, args, kwargs)
        if type(m) in _CONV_MODULES:
            return _conv_module(m, x, *args[1:], **kwargs)
        if isinstance(m, nn.Upsample):
            return _interpolate_indicator(x, m.size, m.scale_factor, m.mode, m.align_corners)
        if isinstance(m, nn.Linear):
            return F.linear(x, _indicator(m.weight))
        if isinstance(m, nn.AvgPool2d):
            return _sum_pool(
                F.avg_pool2d,
                (x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad),
                {},
            )
        if isinstance(m, nn.AvgPool1d):
            return _sum_pool(
                F.avg_pool1d,
                (x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad),
                {},
            )
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            return _adaptive_sum(x, m.output_size)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):  # an unfolded per-channel affine map
            scale = m.weight if m.affine else torch.ones(m.num_features)
            return x * _indicator(scale).view(-1, *([1] * (x.dim() - 2)))
        return m(*args, **kwargs)  # Flatten, ZeroPad2d, ...: index maps, kept as they are

    def call_function(self, target, args, kwargs):
        if target in _WEIGHTED:
            w = args[1] if len(args) > 1 else kwargs["weight"]
            rest = {k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")}
            return target(args[0], _indicator(w), None, *args[3:], **rest)
        if target is F.interpolate:
            return _interpolate_indicator(*args, **kwargs)
        if target in (F.avg_pool1d, F.avg_pool2d):
            return _sum_pool(target, args, kwargs)
        if target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
            return _adaptive_sum(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
        if target is torch.mean:
            return torch.sum(*args, **kwargs)
        if target in (operator.mul, torch.mul):
            return _scaled(*args[:2], divide=False)
        if target in (operator.truediv, torch.div):
            return _scaled(*args[:2], divide=True)
        if target in (operator.sub, torch.sub):
            return args[0] + args[1]
        if target in (operator.neg, torch.neg):
            return args[0]
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if target in _AS_FUNCTION:  # x.mean(...), x.mul(c), ...: as torch.mean(x, ...), ...
            return self.call_function(_AS_FUNCTION[target], args, kwargs)
        return super().call_method(target, args, kwargs)


_AS_FUNCTION = {name: getattr(torch, name) for name in ("mean", "mul", "div", "sub", "neg")}


def fan_out(
    ann: fx.GraphModule, layers: list[str], sample: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Fan-out of every neuron of the input and of each named activation layer, shaped like one
    sample of that layer, as float64 integers. ``sample``: one input, [1, ...]."""
    runner = _FanOut(ann, set(layers))
    with torch.enable_grad():
        runner.run(sample[:1].double())
        runner.objective.backward()
    return {name: leaf.grad[0].detach() for name, leaf in runner.leaves.items()}


def energy_pj(macs: float, sops: float, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> float:
    return macs * e_mac + sops * e_ac
