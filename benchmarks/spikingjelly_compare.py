"""snnconv vs SpikingJelly 2.0.0's ANN->SNN converter, side by side on the same trained ANN.

    bash benchmarks/spikingjelly_setup.sh          # once: creates .venv-sj (torch, spikingjelly, snnconv)
    .venv-sj/bin/python benchmarks/spikingjelly_compare.py [--checkpoint resnet20-cifar10]
        [--data-root ../shared/data] [--images 2000] [--T 16,32] [--batch 128] [--repeats 5]
        [--calibration-images 1024] [--calibration-batch 128] [--threads N]

What is compared
- snnconv: ``snnconv.convert(model, threshold="activation", shift=...)``; V_th of each IF layer
  is the ThresholdReLU's y_th, no data needed. ``snn(x, T)`` returns the readout after every step;
  the prediction is the argmax of ``out[-1]`` (the mean output current over T steps). Accuracy is
  reported for the paper's shift="bias" and for shift="membrane" (snnconv's CLI default); the two
  cost the same, and the timed net is the membrane one.
- SpikingJelly: ``ann2snn.Converter(ann2snn.RateCodingRecipe(dataloader, mode=...))`` (the 2.0.0 API,
  spikingjelly/activation_based/ann2snn/converter.py and recipes/rate_coding.py; the pre-2.0
  ``Converter(dataloader, mode=...)`` form is gone). The recipe fuses conv+BN, puts a VoltageHook
  after every ``nn.ReLU``, runs the calibration loader through the net (the hook keeps an EMA, momentum
  0.1, of each batch's max or percentile), then replaces each ReLU by
  VoltageScaler(1/s) -> IFNode(v_threshold=1, v_reset=None: soft reset, v starts at 0) -> VoltageScaler(s).
  Mode strings (``validate_rate_coding_mode``): "max" (any case; the default is "Max"), "<p>%"
  such as "99.9%" (``torch.quantile`` of the batch), or a float in (0, 1] (that fraction of the max).
  This script times "max" and "99.9%" (one threshold per layer; the channel-wise and LTB
  conversions of SJ_RECIPES run the same convolutions plus a per-channel scale, and their
  accuracy at short T is measured by benchmarks/low_latency.py). The recipe only recognises ``nn.ReLU`` modules, so SpikingJelly
  gets a deep copy of the ANN (same weights) in which every ``snnconv.ThresholdReLU`` (clamp(x, 0, y_th))
  is an ``nn.ReLU``: it measures its own thresholds from data, which is its method. The accuracy of
  that ReLU copy as an ANN is reported too.
- ResNet-20's option-A shortcut (``snnconv.zoo.models.ShortcutA``: ``F.pad(x[:, :, ::2, ::2], ...)``)
  does not convert: the recipe's step-mode adapter (recipes/step_mode_adapters.py,
  ``adapt_step_mode_graph``) rejects the ``F.pad`` call ("does not support function node"). In
  SpikingJelly's copy it is replaced by the same function written with ops the adapter accepts:
  ``y = x[:, :, ::2, ::2]; z = y[:, :pad] * 0; cat([z, y, z], dim=1)`` (identical output, a
  comparable cost).
- Running SpikingJelly's net (its own API, spikingjelly/activation_based/functional/net_config.py):
  single-step mode (the converter's output): ``for t in range(T): acc += net(x)`` on the analog
  input, then ``functional.reset_net(net)``; multi-step mode: ``functional.set_step_mode(net, "m")``
  on a copy and ``net(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))`` -> [T, B, classes], summed over T,
  then ``reset_net``. Both are timed; the faster is "fastest" (and runs the accuracy pass). The prediction is the argmax of the
  sum of the per-step outputs. Both modes are checked to give the same outputs. SpikingJelly's
  neurons have no T-dependent parameters, so its accuracies for every T come from one T_max run
  (prefix sums); snnconv's bias shift V_th/(2T) depends on T, so it is run once per T.

Timing: one batch of --batch test images; per T, snnconv / SJ single-step / SJ multi-step (the "max"
net; the "99.9%" net has the same structure), plus the dense BN-folded ANN forward (``snn.ann``).
snnconv, SJ single-step and the dense ANN each run contiguous and channels_last and the faster of
the two counts for each (SJ multi-step folds time into 5-D tensors, for which channels_last does
not exist). All under ``torch.no_grad()``, 1 warm-up + --repeats timed runs, round-robin over every
method in each repeat in this one process. Median and min-max. Ratios: SJ fastest / snnconv, and
snnconv / (T x dense).

Environment: run with .venv-sj's python (see spikingjelly_setup.sh). SpikingJelly 2.0.0 declares
torchvision and torchaudio as requirements, but neither is installed (torchvision does not import
beside the CPU torch 2.13.0 wheel, torchaudio would replace torch): it is installed with --no-deps
plus the small packages its modules import. Only the submodules needed are imported
(``spikingjelly.activation_based.ann2snn``, ``.neuron``, ``.functional``); none of them imports
torchvision. The versions used are printed and recorded in the JSON.

Output: a readable table, then as the last line one JSON object with all the figures.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata as md
import json
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # SpikingJelly's calibration loop shows a tqdm bar

import torch
from spikingjelly.activation_based import ann2snn, functional, neuron
from torch import nn

import snnconv
from snnconv.io import data as sdata
from snnconv.kernels import backend
from snnconv.zoo import models as smodels
from snnconv.zoo import shipped

SJ_MODES = ("max", "99.9%")


def versions() -> dict:
    def v(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "spikingjelly": v("spikingjelly"),
        "snnconv": v("snnconv"),
        "numpy": v("numpy"),
        "torchvision": v("torchvision"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "isa": backend.isa_label(),
        "cpu_count": os.cpu_count(),
    }


class ShortcutForSJ(nn.Module):
    """snnconv's ShortcutA (every 2nd pixel, zero-pad ``pad`` channels on each side) written with the
    ops SpikingJelly's step-mode adapter accepts (getitem with slices, mul, cat on a non-batch dim)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        y = x[:, :, ::2, ::2]
        z = y[:, : self.pad] * 0.0
        return torch.cat([z, y, z], dim=1)


def relu_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy for SpikingJelly: ThresholdReLU -> nn.ReLU, ShortcutA -> ShortcutForSJ."""
    ann = copy.deepcopy(model).eval()
    counts = {"ThresholdReLU": 0, "ShortcutA": 0}
    for parent in list(ann.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, snnconv.ThresholdReLU):
                setattr(parent, name, nn.ReLU())
                counts["ThresholdReLU"] += 1
            elif isinstance(child, smodels.ShortcutA):
                if child.pad < 1:
                    raise ValueError("ShortcutA with pad 0 is not supported here")
                setattr(parent, name, ShortcutForSJ(child.pad))
                counts["ShortcutA"] += 1
    notes = []
    if counts["ThresholdReLU"]:
        notes.append(
            f"SpikingJelly gets a copy with {counts['ThresholdReLU']} ThresholdReLU -> nn.ReLU "
            "(same weights); it measures its own thresholds from the calibration data"
        )
    if counts["ShortcutA"]:
        notes.append(
            f"{counts['ShortcutA']} option-A shortcuts rewritten without F.pad for SpikingJelly "
            "(slice, *0, cat: same function), as its step-mode adapter rejects F.pad"
        )
    return ann, notes


# SpikingJelly 2.0.0's conversions of a ReLU network, by the name its rows carry. "max" and "99.9%":
# RateCodingRecipe(mode=...) as in its docs' first example (one threshold per layer, neurons from 0);
# "99.9% channel-wise": RateCodingRecipe(mode="99.9%", channel_wise=True, pre_spike_maxpool=True,
# half_threshold=True), its ImageNet example's "robust" recipe (a threshold per channel, membrane from
# V_th/2); "ltb": LocalThresholdBalancingRecipe (Bu et al., CVPR 2025; per-channel thresholds found
# by an online rule over the calibration set, membrane from V_th/2). Each also with "+delay": the
# readout sums steps d..T-1 only, d = ann2snn.estimate_delay_start(net, calibration, T) (its
# ImageNet example's default "auto"); the network and its T steps are the same.
SJ_RECIPES = ("max", "99.9%", "99.9% channel-wise", "ltb")


def sj_recipe(method: str, loader) -> ann2snn.ConversionRecipe:
    """The recipe of a SJ_RECIPES name (ValueError if unknown)."""
    if method == "ltb":
        return ann2snn.LocalThresholdBalancingRecipe(dataloader=loader)
    if method == "99.9% channel-wise":
        return ann2snn.RateCodingRecipe(
            dataloader=loader,
            mode="99.9%",
            channel_wise=True,
            pre_spike_maxpool=True,
            half_threshold=True,
        )
    if method in ("max", "99.9%"):
        return ann2snn.RateCodingRecipe(dataloader=loader, mode=method)
    raise ValueError(f"SpikingJelly method {method!r}: expected one of {SJ_RECIPES}")


def calibration_loader(calibration: torch.Tensor, batch: int):
    dataset = torch.utils.data.TensorDataset(calibration.contiguous())
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)


def sj_convert(ann: nn.Module, calibration: torch.Tensor, method: str, batch: int) -> nn.Module:
    """SpikingJelly's SNN of ``ann`` by the SJ_RECIPES ``method`` (without "+delay")."""
    recipe = sj_recipe(method, calibration_loader(calibration, batch))
    net = ann2snn.Converter(recipe).convert(copy.deepcopy(ann))
    return net.eval()


def sj_delays(net: nn.Module, calibration: torch.Tensor, batch: int, steps) -> dict[int, int]:
    """T -> the first step d its delayed readout sums (SpikingJelly's own estimate for T)."""
    loader = calibration_loader(calibration, batch)
    with warnings.catch_warnings():  # "time_steps is too small ...": it then returns T - 5
        warnings.simplefilter("ignore", RuntimeWarning)
        return {t: ann2snn.estimate_delay_start(net, loader, "cpu", t) for t in steps}


def sj_thresholds(net: nn.Module) -> list[float]:
    """The per-layer scale s (= the effective threshold) of each converted ReLU, in module order."""
    return [
        float(m.scale)
        for name, m in net.named_modules()
        if name.endswith("scaler1") and isinstance(m, ann2snn.modules.VoltageScaler)
    ]


def if_layers(net: nn.Module) -> int:
    return sum(isinstance(m, neuron.IFNode) for m in net.modules())


def sj_single(net: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Per-step outputs [T, B, classes] in single-step mode (the converter's default)."""
    functional.reset_net(net)
    outs = [net(x) for _ in range(T)]
    functional.reset_net(net)
    return torch.stack(outs)


def sj_single_sum(net: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Sum of the per-step outputs, single-step mode: the timed form."""
    functional.reset_net(net)
    acc = net(x)
    for _ in range(T - 1):
        acc = acc + net(x)
    functional.reset_net(net)
    return acc


def sj_multi(net_m: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Per-step outputs [T, B, classes] of a net in multi-step mode."""
    functional.reset_net(net_m)
    out = net_m(x.unsqueeze(0).repeat(T, *([1] * x.dim())))
    functional.reset_net(net_m)
    return out


def sj_multi_sum(net_m: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    return sj_multi(net_m, x, T).sum(0)


def to_multi_step(net: nn.Module) -> tuple[nn.Module | None, str | None]:
    try:
        net_m = copy.deepcopy(net)
        functional.set_step_mode(net_m, "m")
        return net_m, None
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        return None, f"{type(err).__name__}: {err}"


def images_of(ds: sdata.Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n > len(ds):
        raise SystemExit(f"asked for {n} images, {ds.name} {ds.split} has {len(ds)}")
    return sdata.normalize(ds.images[:n], ds.name), ds.labels[:n]


def fmt_ms(stats) -> str:
    med, lo, hi = stats
    return f"{med * 1e3:.1f} ({lo * 1e3:.1f}-{hi * 1e3:.1f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint",
        default="resnet20-cifar10",
        help="shipped model name or snnconv model file (anything load_pretrained accepts)",
    )
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--images", type=int, default=2000, help="CIFAR-10 test images for accuracy")
    p.add_argument("--T", default="16,32", help="comma-separated time steps")
    p.add_argument("--batch", type=int, default=128, help="batch size (timing and evaluation)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after 1 warm-up")
    p.add_argument(
        "--calibration-images",
        type=int,
        default=1024,
        help="CIFAR-10 train images (unaugmented) for SpikingJelly's thresholds",
    )
    p.add_argument(
        "--calibration-batch",
        type=int,
        default=128,
        help="batch size of SpikingJelly's calibration loader (its EMA is per batch)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args(argv)
    Ts = sorted({int(t) for t in args.T.split(",") if t.strip()})
    if not Ts or Ts[0] < 1:
        raise SystemExit(f"--T needs integers >= 1, got {args.T!r}")
    for name in ("images", "batch", "repeats", "calibration_images", "calibration_batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = versions()
    threads = torch.get_num_threads()
    print(
        f"versions: python {info['python']}, torch {info['torch']}, spikingjelly {info['spikingjelly']}, "
        f"snnconv {info['snnconv']}, numpy {info['numpy']}, torchvision {info['torchvision'] or 'not installed'}"
    )
    print(f"CPU: {info['cpu']} ({info['isa']}), {info['cpu_count']} cores, torch threads {threads}")

    # --- model and data ---------------------------------------------------------------------
    model = shipped.load_pretrained(args.checkpoint).eval()
    x_test, y_test = images_of(sdata.load("cifar10", "test", args.data_root), args.images)
    x_cal, _ = images_of(sdata.load("cifar10", "train", args.data_root), args.calibration_images)
    x_batch = x_test[: args.batch].contiguous()
    if len(x_batch) < args.batch:
        print(f"note: timing batch has only {len(x_batch)} images (--images < --batch)")
    batches = [
        (x_test[i : i + args.batch], y_test[i : i + args.batch])
        for i in range(0, len(x_test), args.batch)
    ]

    # --- conversions ------------------------------------------------------------------------
    with torch.no_grad():
        snn = snnconv.convert(model, threshold="activation", shift="membrane")
        snn_bias = snnconv.convert(model, threshold="activation", shift="bias")
        sj_ann, notes = relu_copy(model)
        sj_nets, sj_multi_nets, multi_errors, sj_th = {}, {}, {}, {}
        for mode in SJ_MODES:
            sj_nets[mode] = sj_convert(sj_ann, x_cal, mode, args.calibration_batch)
            sj_th[mode] = sj_thresholds(sj_nets[mode])
            sj_multi_nets[mode], multi_errors[mode] = to_multi_step(sj_nets[mode])
    folded = [n for n in snn.notes if n.startswith("BatchNorm ") and " folded into " in n]
    if folded:
        notes.append(
            f"snnconv folded {len(folded)} BatchNorm layers into their convs (SpikingJelly fuses them too)"
        )
    notes += [f"snnconv: {n}" for n in snn.notes if n not in folded]
    left_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in sj_nets["max"].modules())
    if left_bn:
        notes.append(f"SpikingJelly left {left_bn} BatchNorm layers unfused")
    multi_ok = sj_multi_nets["max"] is not None
    if multi_ok:  # the two modes must agree; a failing multi-step run is reported, not fatal
        try:
            with torch.no_grad():
                T0 = Ts[0]
                a = sj_single(sj_nets["max"], x_batch, T0)
                b = sj_multi(sj_multi_nets["max"], x_batch, T0)
            multi_diff = float((a - b).abs().max())
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
                notes.append(f"SJ multi-step differs from single-step by up to {multi_diff:.3g}")
        except Exception as err:  # noqa: BLE001
            multi_ok, multi_errors["max"] = False, f"{type(err).__name__}: {err}"
    if not multi_ok:
        multi_diff = None
        notes.append(f"SJ multi-step mode unavailable: {multi_errors['max']}")

    # --- timing -----------------------------------------------------------------------------
    dense_cont = snn.ann
    dense_cl = copy.deepcopy(snn.ann).to(memory_format=torch.channels_last)
    x_cl = x_batch.contiguous(memory_format=torch.channels_last)
    snn_cl = copy.deepcopy(snn).to(memory_format=torch.channels_last)
    sj_cl = copy.deepcopy(sj_nets["max"]).to(memory_format=torch.channels_last)
    methods = {
        ("dense", "contiguous"): lambda: dense_cont(x_batch),
        ("dense", "channels_last"): lambda: dense_cl(x_cl),
    }
    for T in Ts:
        methods[(T, "snnconv", "contiguous")] = lambda T=T: snn(x_batch, T)
        methods[(T, "snnconv", "channels_last")] = lambda T=T: snn_cl(x_cl, T)
        methods[(T, "sj_single", "contiguous")] = lambda T=T: sj_single_sum(
            sj_nets["max"], x_batch, T
        )
        methods[(T, "sj_single", "channels_last")] = lambda T=T: sj_single_sum(sj_cl, x_cl, T)
        if multi_ok:
            methods[(T, "sj_multi")] = lambda T=T: sj_multi_sum(sj_multi_nets["max"], x_batch, T)
    times = {k: [] for k in methods}
    with torch.no_grad():
        for r in range(1 + args.repeats):  # round 0 is the warm-up
            for key, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if r:
                    times[key].append(dt)
    stat = {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}
    dense_fmt = min(("contiguous", "channels_last"), key=lambda f: stat[("dense", f)][0])
    dense = stat[("dense", dense_fmt)][0]
    layout = {}  # the faster layout of snnconv and of SJ single-step, per T
    for T in Ts:
        for name in ("snnconv", "sj_single"):
            fmt = min(("contiguous", "channels_last"), key=lambda f: stat[(T, name, f)][0])
            stat[(T, name)], layout[(T, name)] = stat[(T, name, fmt)], fmt

    # --- accuracy (SpikingJelly in whichever mode was faster at T_max) -------------------------
    use_multi = (
        multi_ok
        and all(sj_multi_nets[m] is not None for m in SJ_MODES)
        and stat[(Ts[-1], "sj_multi")][0] < stat[(Ts[-1], "sj_single")][0]
    )
    with torch.no_grad():
        correct = {"ann": 0, "ann_relu_copy": 0}
        correct.update({(T, m): 0 for T in Ts for m in ("snnconv", "snnconv_bias", *SJ_MODES)})
        for x, y in batches:
            correct["ann"] += int((model(x).argmax(1) == y).sum())
            correct["ann_relu_copy"] += int((sj_ann(x).argmax(1) == y).sum())
            for T in Ts:
                correct[(T, "snnconv")] += int((snn(x, T)[-1].argmax(1) == y).sum())
                correct[(T, "snnconv_bias")] += int((snn_bias(x, T)[-1].argmax(1) == y).sum())
            for mode in SJ_MODES:
                out = (
                    sj_multi(sj_multi_nets[mode], x, Ts[-1])
                    if use_multi
                    else sj_single(sj_nets[mode], x, Ts[-1])
                )
                cum = out.cumsum(0)
                for T in Ts:
                    correct[(T, mode)] += int((cum[T - 1].argmax(1) == y).sum())
    n = len(y_test)
    acc = {k: correct[k] / n for k in correct}

    # --- report -----------------------------------------------------------------------------
    print(
        f"checkpoint {args.checkpoint}: {type(model).__name__}, CIFAR-10 test images {n}, "
        f"calibration {args.calibration_images} train images (batch {args.calibration_batch}), "
        f"timing batch {len(x_batch)}, {args.repeats} timed runs + 1 warm-up, round-robin"
    )
    for note in notes:
        print(f"note: {note}")
    print(f"IF layers: snnconv {len(snn.layers)}, SpikingJelly {if_layers(sj_nets['max'])}")
    print(f"SJ thresholds (max):   {', '.join(f'{v:.3g}' for v in sj_th['max'])}")
    print(f"SJ thresholds (99.9%): {', '.join(f'{v:.3g}' for v in sj_th['99.9%'])}")
    print(
        f"snnconv thresholds:    {', '.join(f'{float(m.v_th.max()):.3g}' for m in snn.layers.values())}"
    )
    if multi_ok:
        print(f"SJ multi-step vs single-step outputs: max |diff| {multi_diff:.3g} (T={Ts[0]})")
    print()
    print(
        f"dense ANN (BN folded) ms: contiguous {fmt_ms(stat[('dense', 'contiguous')])}, "
        f"channels_last {fmt_ms(stat[('dense', 'channels_last')])} -> {dense_fmt}"
    )
    print(
        f"ANN accuracy {acc['ann']:.2%} (SpikingJelly's ReLU copy as an ANN: {acc['ann_relu_copy']:.2%})"
    )
    print()
    W = 27  # width of a time column
    head = [
        "T",
        "snnconv ms (min-max)",
        "SJ single-step ms",
        "SJ multi-step ms",
        "SJ fastest / snnconv",
        "snnconv / (T x dense)",
        "acc snnconv membrane",
        "acc snnconv bias",
        "acc SJ max",
        "acc SJ 99.9%",
    ]
    widths = [3, W, W, W, 20, 21, 20, 16, 10, 12]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    rows = []
    for T in Ts:
        s = stat[(T, "snnconv")]
        single = stat[(T, "sj_single")]
        multi = stat.get((T, "sj_multi"))
        fastest_name = "multi" if multi and multi[0] < single[0] else "single"
        fastest = multi if fastest_name == "multi" else single
        row = {
            "T": T,
            "snnconv_s": s[0],
            "snnconv_range_s": [s[1], s[2]],
            "sj_single_s": single[0],
            "sj_single_range_s": [single[1], single[2]],
            "sj_multi_s": multi[0] if multi else None,
            "sj_multi_range_s": [multi[1], multi[2]] if multi else None,
            "sj_fastest": fastest_name,
            "sj_fastest_s": fastest[0],
            "sj_fastest_over_snnconv": fastest[0] / s[0],
            "snnconv_over_T_dense": s[0] / (T * dense),
            "snnconv_layout": layout[(T, "snnconv")],
            "sj_single_layout": layout[(T, "sj_single")],
            "acc_snnconv": acc[(T, "snnconv")],
            "acc_snnconv_bias": acc[(T, "snnconv_bias")],
            "acc_sj_max": acc[(T, "max")],
            "acc_sj_99.9%": acc[(T, "99.9%")],
        }
        rows.append(row)
        cells = [
            str(T),
            fmt_ms(s),
            fmt_ms(single),
            fmt_ms(multi) if multi else "n/a",
            f"{row['sj_fastest_over_snnconv']:.2f} ({fastest_name})",
            f"{row['snnconv_over_T_dense']:.2f}",
            f"{row['acc_snnconv']:.2%}",
            f"{row['acc_snnconv_bias']:.2%}",
            f"{row['acc_sj_max']:.2%}",
            f"{row['acc_sj_99.9%']:.2%}",
        ]
        print("| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |")
    print(
        f"Times are per batch of {len(x_batch)}; dense ANN = {dense * 1e3:.1f} ms ({dense_fmt}). "
        "SJ fastest = the faster of its single-step and multi-step modes. Layouts (faster of "
        "contiguous / channels_last): "
        + ", ".join(
            f"T={T} snnconv {layout[(T, 'snnconv')]}, SJ single {layout[(T, 'sj_single')]}"
            for T in Ts
        )
    )

    result = {
        "benchmark": "spikingjelly_compare",
        "versions": info,
        "torch_threads": threads,
        "checkpoint": str(args.checkpoint),
        "images": n,
        "batch": len(x_batch),
        "T": Ts,
        "repeats": args.repeats,
        "calibration_images": args.calibration_images,
        "calibration_batch": args.calibration_batch,
        "snnconv": {
            "threshold": "activation",
            "timed_shift": "membrane",
            "accuracy_shifts": ["membrane", "bias"],
        },
        "spikingjelly": {
            "api": "ann2snn.Converter(ann2snn.RateCodingRecipe(dataloader, mode))",
            "modes": list(SJ_MODES),
            "timed_mode": "max",
            "multi_step_available": multi_ok,
            "multi_step_error": None if multi_ok else multi_errors["max"],
            "multi_vs_single_max_abs_diff": multi_diff,
            "accuracy_pass_mode": "multi" if use_multi else "single",
            "thresholds": sj_th,
        },
        "dense_s": {
            "contiguous": stat[("dense", "contiguous")][0],
            "channels_last": stat[("dense", "channels_last")][0],
            "used": dense_fmt,
            "contiguous_range_s": list(stat[("dense", "contiguous")][1:]),
            "channels_last_range_s": list(stat[("dense", "channels_last")][1:]),
        },
        "acc_ann": acc["ann"],
        "acc_ann_relu_copy": acc["ann_relu_copy"],
        "rows": rows,
        "notes": notes,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
