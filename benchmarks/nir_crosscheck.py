"""Cross-check: the shipped ResNet-20, exported to NIR by snnconv, run by snnTorch's NIR importer.

    bash benchmarks/nir_crosscheck_setup.sh      # once: build/nir-crosscheck-venv (not CI's)
    build/nir-crosscheck-venv/bin/python benchmarks/nir_crosscheck.py --data-root ../shared/data
        [--images 2000] [--batch 250] [--T 16,32,64] [--shift membrane]

What runs
- snnconv: ``convert(load_pretrained("resnet20-cifar10"), shift=...)``, simulated by snnconv;
  readout = mean output over steps; spike counts per neuron at each T.
- The same network exported with ``snnconv.io.nir.export_nir`` in both IF forms ("loop": NIR's
  I -> Threshold -> Scale(-V_th) loop; "if": nir.IF + metadata), written and read back with
  ``nir.write`` / ``nir.read``.
- snnTorch 1.0.0 as shipped: ``snntorch.import_nir.import_from_nir(graph)`` on each file; the
  outcome (or the error) is printed.
- snnTorch's mapping with the glue it lacks: its own ``_nir_to_snntorch_module`` for Affine,
  Conv2d, AvgPool2d and IF (IF -> ``snn.Leaky(beta=0.9, threshold=v_threshold)``, reset by
  subtraction), run by nirtorch 2.6's ``nir_to_torch`` graph executor (which sums the edges into a
  node and feeds a recurrent edge the previous step's value), plus four small modules written
  here: Scale (multiply), Flatten (NIR's dims counted without the batch, so start_dim + 1),
  SpikesOnly (snnTorch builds nir.IF as Leaky(init_hidden=False), which returns a (spikes,
  membrane) tuple that no next layer takes), and, for the loop form, I (an integrator, dt = 1)
  and Threshold (v > theta). One call per time step
  on the analog input; readout = mean output over steps.
- The if form once more with snnTorch's Leaky at beta=1 ("if-noleak"), to separate the share of
  the leak from that of the lost initial membrane (nir.IF has no field for it).
- Reported per form and T: accuracy on the first --images CIFAR-10 test images (snnconv's and
  snnTorch's), the fraction of neurons whose spike count equals snnconv's, and the ratio of total
  spikes (snnTorch / snnconv).

Output: the table, then one JSON line with every figure; progress on stderr. Cost: the default
2,000 images took 1,799 s on the project's 2-core Zen 4 machine (AVX-512) while it shared the CPU with a
training (benchmarks/results/nir_crosscheck.txt); --images 100 takes minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nir
import nirtorch
import numpy as np
import snntorch
import torch
from snntorch import import_nir as snn_import
from torch import nn

import snnconv
from snnconv.io import data
from snnconv.io.nir import export_nir
from snnconv.zoo.shipped import load_pretrained

FORMS = ("loop", "if")
VARIANTS = ("loop", "if", "if-noleak")  # if-noleak: the if file, snnTorch's Leaky with beta=1


class Scale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, np.float32)))

    def forward(self, x):
        return x * self.scale


class Integrator(nn.Module):
    """NIR's I with dt = 1: v += r * input; its state goes through nirtorch's state dict."""

    def __init__(self, r):
        super().__init__()
        self.register_buffer("r", torch.as_tensor(np.asarray(r, np.float32)))

    def forward(self, x, state=None):
        v = self.r * x if state is None else state + self.r * x
        return v, v


def _no_leak(module: nn.Module, leak: bool) -> nn.Module:
    if not leak and isinstance(module, snntorch.Leaky):
        module.beta.fill_(1.0)
    return module


class SpikesOnly(nn.Module):
    """snnTorch maps nir.IF to Leaky(init_hidden=False), which returns (spikes, membrane)."""

    def __init__(self, leaky: nn.Module):
        super().__init__()
        self.leaky = leaky

    def forward(self, x):
        return self.leaky(x)[0]


class Heaviside(nn.Module):
    def __init__(self, threshold):
        super().__init__()
        self.register_buffer("theta", torch.as_tensor(np.asarray(threshold, np.float32)))

    def forward(self, x):
        return (x > self.theta).to(x.dtype)


def snntorch_with_glue(graph, leak: bool = True) -> nn.Module:
    """snnTorch's own node mapping + the modules it lacks, run by nirtorch's executor; with
    ``leak=False`` its Leaky neurons get beta=1 (no leak), to tell the leak's share apart."""
    own = lambda n: _no_leak(snn_import._nir_to_snntorch_module(n, init_hidden=True), leak)  # noqa: E731
    node_map = {nir.Affine: own, nir.Conv2d: own, nir.AvgPool2d: own}
    node_map[nir.IF] = lambda n: SpikesOnly(own(n))
    node_map[nir.Scale] = lambda n: Scale(n.scale)
    node_map[nir.I] = lambda n: Integrator(n.r)
    node_map[nir.Threshold] = lambda n: Heaviside(n.threshold)
    node_map[nir.Flatten] = lambda n: nn.Flatten(
        int(n.start_dim) + 1, int(n.end_dim) + 1 if int(n.end_dim) >= 0 else int(n.end_dim)
    )
    return nirtorch.nir_to_torch(graph, node_map)


def as_shipped(path: Path, x: torch.Tensor) -> str:
    """What snnTorch's import_from_nir does with the file, as shipped."""
    try:
        net = snn_import.import_from_nir(nir.read(path))
        net(x[:2])
        return "imported and ran one step"
    except Exception as err:  # report whatever it raises
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {first[:160]}"


def run_snntorch(net: nn.Module, x: torch.Tensor, steps: list[int], spiking: dict):
    """(readout at each T [B, classes], spike counts per layer at each T) of one batch."""
    for m in net.modules():
        if isinstance(m, snntorch.Leaky):
            m.reset_mem()
    counts = {layer: 0.0 for layer in spiking}
    hooks = []
    for layer, module in spiking.items():

        def hook(_m, _args, out, layer=layer):
            counts[layer] = counts[layer] + (out[0] if isinstance(out, tuple) else out)

        hooks.append(module.register_forward_hook(hook))
    state, total, readouts, snaps = None, 0.0, {}, {}
    with torch.no_grad():
        for t in range(1, max(steps) + 1):
            out, state = net(x, state)
            total = total + out
            if t in steps:
                readouts[t] = total / t
                snaps[t] = {k: v.clone() for k, v in counts.items()}
    for h in hooks:
        h.remove()
    return readouts, snaps


def run_snnconv(snn, x: torch.Tensor, steps: list[int]):
    snaps = {}

    def mark(t):
        snaps[t] = {k: m.spike_count.clone() for k, m in snn.layers.items()}

    out = snn(x, max(steps), marks=steps, on_mark=mark)
    return {t: out[t - 1] for t in steps}, snaps


def spiking_modules(net: nn.Module, layers: list[str], form: str) -> dict:
    named = dict(net.named_modules())
    suffix = "_fire" if form == "loop" else "_if"  # the nodes that emit 0/1 spikes
    return {layer: named[f"{layer}{suffix}"] for layer in layers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--T", default="16,32,64")
    p.add_argument("--shift", default="membrane", choices=("membrane", "bias", "none"))
    args = p.parse_args()
    steps = sorted(int(t) for t in args.T.split(","))
    start = time.time()
    test = data.load("cifar10", "test", root=args.data_root)
    x_all = data.normalize(test.images[: args.images], "cifar10")
    labels = test.labels[: args.images]
    model = load_pretrained("resnet20-cifar10")
    snn = snnconv.convert(model, shift=args.shift)
    plain = snnconv.convert(model, shift="none")  # what a nir.IF read without v_init/bias means
    layers = list(snn.layers)
    tmp = Path(tempfile.mkdtemp())
    shipped, nets = {}, {}
    for form in FORMS:
        path = tmp / f"resnet20-{form}.nir"
        export_nir(snn, path, T=max(steps), if_form=form, input_shape=(3, 32, 32))
        shipped[form] = as_shipped(path, x_all)
        nets[form] = snntorch_with_glue(nir.read(path))
    nets["if-noleak"] = snntorch_with_glue(nir.read(tmp / "resnet20-if.nir"), leak=False)
    runs = ("snnconv", "snnconv-none") + VARIANTS
    correct = {(w, t): 0 for w in runs for t in steps}
    same = {(f, t): 0 for f in VARIANTS + ("if-noleak~none",) for t in steps}
    spikes = {(w, t): 0.0 for w in runs for t in steps}
    neurons = 0
    batches = list(zip(x_all.split(args.batch), labels.split(args.batch)))
    for i, (x, y) in enumerate(batches):
        print(f"batch {i + 1}/{len(batches)} at {time.time() - start:.0f} s", file=sys.stderr)
        ours, ours_counts = run_snnconv(snn, x, steps)
        neurons += sum(c.numel() for c in ours_counts[steps[0]].values())
        for t in steps:
            correct["snnconv", t] += (ours[t].argmax(1) == y).sum().item()
            spikes["snnconv", t] += sum(c.sum().item() for c in ours_counts[t].values())
        none, none_counts = run_snnconv(plain, x, steps)
        for t in steps:
            correct["snnconv-none", t] += (none[t].argmax(1) == y).sum().item()
            spikes["snnconv-none", t] += sum(c.sum().item() for c in none_counts[t].values())
        for form in VARIANTS:
            spiking = spiking_modules(nets[form], layers, form)
            theirs, counts = run_snntorch(nets[form], x, steps, spiking)
            for t in steps:
                correct[form, t] += (theirs[t].argmax(1) == y).sum().item()
                spikes[form, t] += sum(c.sum().item() for c in counts[t].values())
                same[form, t] += _equal(counts[t], ours_counts[t])
                if form == "if-noleak":
                    same["if-noleak~none", t] += _equal(counts[t], none_counts[t])
    report(args, steps, shipped, correct, same, spikes, neurons, time.time() - start)


def _equal(a: dict, b: dict) -> int:
    """Neurons with the same spike count in a and b (dicts by layer)."""
    return sum((a[k] == b[k]).sum().item() for k in b)


def report(args, steps, shipped, correct, same, spikes, neurons, seconds) -> None:
    n = args.images
    row = lambda label, cells: print(f"{label:<34}" + "".join(f"{c:>11}" for c in cells))  # noqa: E731
    print(
        f"ResNet-20 (shipped), shift={args.shift}, {n} CIFAR-10 test images, "
        f"nir {nir.__version__}, snnTorch {snntorch.__version__}, torch {torch.__version__}"
    )
    for form in FORMS:
        print(f"snnTorch import_from_nir as shipped, {form} form: {shipped[form]}")
    row("", [f"T={t}" for t in steps])
    row(
        f"snnconv (shift={args.shift}) accuracy",
        [f"{correct['snnconv', t] / n:.2%}" for t in steps],
    )
    row("snnconv (shift=none) accuracy", [f"{correct['snnconv-none', t] / n:.2%}" for t in steps])
    for form in VARIANTS:
        row(f"snnTorch+glue, {form}: accuracy", [f"{correct[form, t] / n:.2%}" for t in steps])
        row("  equal spike counts vs snnconv", [f"{same[form, t] / neurons:.4%}" for t in steps])
        if form == "if-noleak":
            cells = [f"{same['if-noleak~none', t] / neurons:.4%}" for t in steps]
            row("  equal counts vs snnconv none", cells)
        ratio = [f"{spikes[form, t] / spikes['snnconv', t]:.3f}" for t in steps]
        row("  spikes / snnconv's", ratio)
    print(f"done in {seconds:.0f} s")
    figures = {
        "images": n,
        "shift": args.shift,
        "T": steps,
        "as_shipped": shipped,
        "accuracy": {f"{w}@{t}": correct[w, t] / n for (w, t) in correct},
        "equal_counts": {f"{f}@{t}": same[f, t] / neurons for (f, t) in same},
        "spike_ratio": {f"{w}@{t}": spikes[w, t] / spikes["snnconv", t] for (w, t) in spikes},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
