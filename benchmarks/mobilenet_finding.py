"""MobileNetV2 finding (issue 16, defect 9): why a converted MobileNetV2 is far from its ANN at
T=1024 although the simulator equals its step-by-step oracle.

    python benchmarks/mobilenet_finding.py [--width 1.0] [--batch 16] [--T 64,256,1024]
        [--calibration 64] [--percentile 99.99] [--threshold percentile] [--shift membrane]
        [--bn random|plain] [--no-residual] [--data-root ../shared/data] [--seed 0]

The model is written here by hand (no torchvision): CIFAR-style MobileNetV2 (32x32 input, stride
1 stem and first stages), 35 ReLU6 layers, depthwise 3x3 convs, inverted residuals with linear
bottlenecks; random init (torchvision's: kaiming_normal fan_out) and, with --bn random (default),
non-trivial BN statistics. Calibration and test images are CIFAR-10 test images.

Three networks are compared on the same images, layer by layer and at the output:

  clipped ANN    snn.ann with each activation clipped to [0, V_th]: the SNN's T -> infinity limit
  quantised ANN  the clipped ANN with each activation rounded to the grid V_th/T (the rate of an
                 IF neuron fed the constant current; membrane shift rounds): what T-step rates
                 give when every spike train is perfectly even
  SNN            snn(x, T) (counts read at every T in one run: shift "membrane")

so that  SNN - clipped = (quantised - clipped) + (SNN - quantised):  the first part is rate
quantisation carried through the network, the second the unevenness of spike trains (timing).
Output errors are relative: ||y - y_clipped|| / ||y_clipped - mean over the batch|| (the part of
the logits that depends on the image; a random network's logits are mostly a constant vector),
and top-1 agreement with the clipped ANN. Per layer: mean |r - c| / mean |c| against the clipped
ANN's activation c, and the layer's range V_th / rms(c) (the resolution V_th/T relative to the
typical value). The sensitivity probe adds independent noise of the quantisation's size,
uniform in +-V_th/(2T), to one layer at a time of the clipped ANN and reports the output change:
how much each layer's rounding is amplified on its way to the logits.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

import snnconv
from snnconv.conversion.prepare import ClippedANN
from snnconv.io import data

# (expansion t, output channels c, blocks n, first stride s): MobileNetV2 for 32x32 inputs
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def divisible(v: float, by: int = 8) -> int:
    """torchvision's _make_divisible: channels rounded to a multiple of 8, never below 90 %."""
    new = max(by, int(v + by / 2) // by * by)
    return new + by if new < 0.9 * v else new


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 project (linear: no activation), plus
    the input when shapes allow (the residual path carries signed values)."""

    def __init__(self, cin: int, cout: int, stride: int, t: int, residual: bool = True):
        super().__init__()
        hidden = cin * t
        layers = [conv_bn(cin, hidden, 1)] if t != 1 else []
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, cout, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = residual and stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0, classes: int = 10, residual: bool = True):
        super().__init__()
        cin = divisible(32 * width)
        layers = [conv_bn(3, cin, 3)]
        for t, c, n, s in SETTINGS:
            cout = divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, residual))
                cin = cout
        last = divisible(1280 * max(1.0, width))
        layers.append(conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def set_bn_from_data(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BN running statistics measured on ``x`` (train-mode passes, cumulative average), with
    random affine parameters: BN then normalises as in a trained network."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.1)
    model.train()
    with torch.no_grad():
        for chunk in x.split(16):
            model(chunk)
    return model.eval()


def build(width: float, bn: str, residual: bool, seed: int, init: str = "torchvision"):
    """--init torchvision (kaiming_normal fan_out convs, N(0, 0.01) classifier) or default
    (PyTorch's own); --bn random draws BN statistics and affine parameters per channel
    (mean +-0.2, variance 0.5-1.5, weight 0.5-1.5, bias -0.1-0.3), as tests/nets.py does."""
    torch.manual_seed(seed)
    model = MobileNetV2(width, residual=residual)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if init == "default" and not isinstance(m, nn.BatchNorm2d):
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and bn == "random":
            k = m.num_features
            m.running_mean.copy_(torch.rand(k, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(k, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(k, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(k, generator=g) * 0.4 - 0.1)
    return model.eval()


class Clipped(ClippedANN):
    """``prepare.ClippedANN`` (the clipped ANN; with ``steps`` the quantised ANN), and with
    ``noise`` = (layer, T): uniform +-V_th/(2T) noise added to that layer's in-range values.
    Records each layer's activation in ``acts``."""

    def __init__(self, snn, steps: int | None = None, noise: tuple[str, int] | None = None):
        super().__init__(snn.ann, {k: m.v_th.item() for k, m in snn.layers.items()}, steps)
        self.noise = noise

    def run_node(self, n):
        out = super().run_node(n)
        if self.noise is not None and self.noise[0] == n.name:
            v_th = self.v_th[n.name]
            inside = (out > 0) & (out < v_th)
            out = out + inside * (torch.rand_like(out) - 0.5) * v_th / self.noise[1]
            self.acts[n.name] = out
        return out


def output_error(y: torch.Tensor, ref: torch.Tensor) -> dict:
    spread = (ref - ref.mean(0)).norm().item()
    return {
        "rel": (y - ref).norm().item() / spread,
        "rel_to_logits": (y - ref).norm().item() / ref.norm().item(),
        "top1_agree": (y.argmax(1) == ref.argmax(1)).float().mean().item(),
    }


def layer_error(r: torch.Tensor, c: torch.Tensor) -> float:
    return ((r - c).abs().mean() / c.abs().mean().clamp_min(1e-30)).item()


def images(root: str, n: int, offset: int = 0) -> torch.Tensor:
    test = data.load("cifar10", "test", root=root)
    return data.normalize(test.images[offset : offset + n], "cifar10")


def simulate(snn, x: torch.Tensor, steps: list[int]) -> tuple[torch.Tensor, dict]:
    """Readout [T, B, classes] and each layer's rate at every requested T, in one run."""
    rates: dict[int, dict[str, torch.Tensor]] = {}

    def on_mark(t):
        rates[t] = {k: m.spike_count * m.v_th / t for k, m in snn.layers.items()}

    out = snn(x, max(steps), marks=steps, on_mark=on_mark)
    return out, rates


def sensitivity(snn, x: torch.Tensor, ref: torch.Tensor, steps: int, names: list[str]) -> dict:
    """Output change (relative, as output_error) from quantisation-sized noise in one layer."""
    result = {}
    for name in names:
        with torch.no_grad():
            y = Clipped(snn, noise=(name, steps)).run(x)
        result[name] = output_error(y, ref)["rel"]
    return result


def layer_table(snn, acts: dict, names: list[str], steps: int) -> dict:
    """Per layer: V_th, rms of the clipped ANN's activation, rms of its input-dependent part
    (deviation from the batch mean) and the rms of the rounding noise at T=``steps`` relative
    to that part."""
    rows = {}
    for k in names:
        a, v = acts[k], snn.layers[k].v_th.item()
        signal = (a - a.mean(0)).pow(2).mean().sqrt().item()
        inside = ((a > 0) & (a < v)).double().mean().item()
        noise = v / steps / math.sqrt(12) * math.sqrt(inside)  # uniform +-V_th/2T where in range
        rows[k] = {
            "v_th": v,
            "rms": a.pow(2).mean().sqrt().item(),
            "signal": signal,
            "noise_to_signal": noise / max(signal, 1e-30),
        }
    return rows


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--T", default="64,256,1024")
    p.add_argument("--threshold", default="percentile", choices=("percentile", "max"))
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--shift", default="membrane", choices=("membrane", "none"))
    p.add_argument("--bn", default="random", choices=("random", "data", "plain"))
    p.add_argument("--init", default="torchvision", choices=("torchvision", "default"))
    p.add_argument("--no-residual", action="store_true")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-snn", action="store_true", help="ANN-side figures only (fast)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    steps = sorted(int(t) for t in args.T.split(","))
    calib = images(args.data_root, args.calibration)
    x = images(args.data_root, args.batch, offset=5000)
    model = build(args.width, "plain" if args.bn == "data" else args.bn, not args.no_residual,
                  args.seed, args.init)  # fmt: skip
    if args.bn == "data":
        set_bn_from_data(model, calib)
    snn = snnconv.convert(
        model, calibration=[calib], threshold=args.threshold, percentile=args.percentile,
        shift=args.shift,
    )  # fmt: skip
    names = list(snn.layers)
    with torch.no_grad():
        clip = Clipped(snn)
        ref = clip.run(x)
        ann = snn.ann(x)
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "args": vars(args),
        "if_layers": len(names),
        "input_dependent": ((ref - ref.mean(0)).norm() / ref.norm()).item(),
        "clipped_vs_ann": output_error(ref, ann),
        "notes": snnconv.inspect(model, calibration=[calib], threshold=args.threshold,
                                 percentile=args.percentile).notes,
        "layers": layer_table(snn, clip.acts, names, max(steps)),
        "T": {},
    }  # fmt: skip
    torch.manual_seed(args.seed)
    sens = sensitivity(snn, x, ref, max(steps), names)
    for k in names:
        row = result["layers"][k]
        row["noise_to_output"] = sens[k]
        row["gain"] = sens[k] / max(row["noise_to_signal"], 1e-30)
    start = time.perf_counter()
    out, rates = (None, None) if args.no_snn else simulate(snn, x, steps)
    result["simulation_s"] = round(time.perf_counter() - start, 1)
    for t in steps:
        result["T"][t] = t_figures(snn, x, ref, clip.acts, names, t, out, rates)
    if out is not None:
        oracle = snn.stepwise(x, 16)
        result["fast_vs_oracle_T16"] = (out[15] - oracle[-1]).abs().max().item()
    report(result, names, steps)
    print(json.dumps(result))
    return result


def t_figures(snn, x, ref, acts, names, t, out, rates) -> dict:
    with torch.no_grad():
        q = Clipped(snn, steps=t)
        yq = q.run(x)
    fig = {
        "quantised": output_error(yq, ref),
        "layers_quantised": {k: layer_error(q.acts[k], acts[k]) for k in names},
    }
    if out is not None:
        fig["snn"] = output_error(out[t - 1], ref)
        fig["snn_vs_quantised"] = output_error(out[t - 1], yq)["rel"]
        fig["layers_snn"] = {k: layer_error(rates[t][k], acts[k]) for k in names}
    return fig


def report(r: dict, names: list[str], steps: list[int]) -> None:
    print(f"{r['if_layers']} IF layers, simulation {r['simulation_s']} s; input-dependent part of the clipped ANN's output: "
          f"{r['input_dependent']:.2e} of its norm; fast vs oracle at T=16: "
          f"{r.get('fast_vs_oracle_T16', 'not run')}")  # fmt: skip
    print("errors relative to the input-dependent part (rel) and to the logits (logits)")
    print("T       quantised rel  logits  top1 | SNN rel      logits  top1")
    for t in steps:
        q, s = r["T"][t]["quantised"], r["T"][t].get("snn")
        line = f"{t:<7d} {q['rel']:13.4g} {q['rel_to_logits']:7.2e} {q['top1_agree']:5.2f}"
        if s is not None:
            line += f" | {s['rel']:11.4g} {s['rel_to_logits']:7.2e} {s['top1_agree']:5.2f}"
        print(line)
    t = max(steps)
    print(
        f"\nper layer, T={t}: V_th, input-dependent rms, rounding noise / that rms, output "
        "change (rel) from that noise in this layer alone, gain = the two ratios' quotient"
    )
    print("layer                  V_th  signal  noise/sig  noise->out     gain  err quant  err SNN")
    for k in names:
        row, fig = r["layers"][k], r["T"][t]
        snn_err = fig["layers_snn"][k] if "layers_snn" in fig else float("nan")
        print(f"{k:<21s} {row['v_th']:5.2f} {row['signal']:7.4f} {row['noise_to_signal']:10.2e} "
              f"{row['noise_to_output']:11.4f} {row['gain']:8.1f} "
              f"{fig['layers_quantised'][k]:10.4f} {snn_err:8.4f}")  # fmt: skip
    for n in r["notes"]:
        if not n.startswith("BatchNorm"):  # the foldings are not news
            print("note:", n)


if __name__ == "__main__":
    main()
