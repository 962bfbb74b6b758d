"""Which percentile to take a ReLU network's thresholds at, chosen without the test set: the SNN's
accuracy vs T for each candidate percentile on the validation images its ANN was selected on.

    python benchmarks/percentile_choice.py --data-root ../shared/data

The model (default the shipped resnet20-cifar10-relu) was trained on 45,000 CIFAR-10 training
images with 5,000 held out for validation (its card: ``data.train_val_split(train, 5000, seed
0)``); those 5,000 are the images here. For each --percentiles p the network is converted as
benchmarks/low_latency.py converts "percentileP" (V_th = the p-th percentile of each layer's
activations on the first --calibration-images unaugmented training images, membrane from V_th/2,
--neuron), simulated once for the largest T, read at every --T. The choice: the percentile whose
SNN comes within --within points of the ANN (on the same validation images) at the smallest T,
the higher accuracy there breaking ties. The test split is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from snnconv.io import checkpoint, data
from snnconv.options import check_percentile
from snnconv.zoo import shipped

sys.path.insert(0, str(Path(__file__).parent))
import low_latency  # noqa: E402  (convert_row: the conversion of a "percentileP" row)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default="resnet20-cifar10-relu")
    p.add_argument("--percentiles", default="99,99.5,99.7,99.8,99.9,99.95,99.99")
    p.add_argument("--T", default="4,8,12,16,24")
    p.add_argument("--neuron", default="signed", choices=("if", "signed"))
    p.add_argument("--validation-images", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0, help="of the train/validation split")
    p.add_argument("--calibration-images", type=int, default=1024)
    p.add_argument("--within", type=float, default=1.0, help="points below the ANN")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("validation_images", "calibration_images", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        args.percentiles = [
            check_percentile(v, "--percentiles") for v in args.percentiles.split(",")
        ]
    except ValueError as e:  # OptionError names the option; float() does not
        p.error(str(e) if str(e).startswith("--") else f"--percentiles: {e}")
    try:
        args.T = sorted({int(v) for v in args.T.split(",")})
    except ValueError as e:
        p.error(f"--T: {e}")
    if min(args.T) < 1:
        p.error(f"every --T must be at least 1, got {min(args.T)}")
    return args


def choose(rows: list[dict], ann: float, within: float) -> dict | None:
    """The row that reaches ann - within at the smallest T (ties: the higher accuracy there)."""
    best = None
    for row in rows:
        t = next((t for t in sorted(row["accuracy"]) if row["accuracy"][t] >= ann - within), None)
        if t is not None:
            key = (t, -row["accuracy"][t])
            if best is None or key < best[0]:
                best = (key, row)
    return None if best is None else best[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    fmt = torch.channels_last
    train = data.load("cifar10", "train", args.data_root)
    _, val = data.train_val_split(train, args.validation_images, args.seed)
    x = data.normalize(val.images, "cifar10").contiguous(memory_format=fmt)
    cal = data.normalize(train.images[: args.calibration_images], "cifar10")
    model = shipped.load_pretrained(args.model).to(memory_format=fmt)
    batches = list(zip(x.split(args.batch), val.labels.split(args.batch)))
    with torch.no_grad():
        ann = sum(int((model(xb).argmax(-1) == yb).sum()) for xb, yb in batches) / len(x)
    rows = []
    for p in args.percentiles:
        method = f"percentile{p:g}" + ("+signed" if args.neuron == "signed" else "")
        snn = low_latency.convert_row(model, method, cal)  # as low_latency's rows are converted
        correct = dict.fromkeys(args.T, 0)
        for xb, yb in batches:
            out = snn(xb, max(args.T))
            for t in args.T:
                correct[t] += int((out[t - 1].argmax(-1) == yb).sum())
        rows.append(
            {"percentile": p, "accuracy": {t: 100 * c / len(x) for t, c in correct.items()}}
        )
        print(f"  {p:g}: " + ", ".join(f"T={t} {a:.2f}" for t, a in rows[-1]["accuracy"].items()))
    print(
        f"{args.model}, neuron {args.neuron}, {len(x)} validation images (seed {args.seed}), "
        f"ANN {100 * ann:.2f} %; thresholds from {len(cal)} training images"
    )
    print("| percentile | " + " | ".join(f"T={t}" for t in args.T) + " |")
    print("|---|" + "---|" * len(args.T))
    for row in rows:
        accs = " | ".join(f"{a:.2f}" for a in row["accuracy"].values())
        print(f"| {row['percentile']:g} | {accs} |")
    chosen = choose(rows, 100 * ann, args.within)
    if chosen is None:
        print(f"no percentile comes within {args.within:g} point(s) of the ANN by T={max(args.T)}")
    else:
        t = next(t for t, a in chosen["accuracy"].items() if a >= 100 * ann - args.within)
        print(f"chosen: {chosen['percentile']:g} (within {args.within:g} point(s) from T={t})")
    if args.out:
        result = {"ann": 100 * ann, "rows": rows, "chosen": chosen and chosen["percentile"]}
        checkpoint.save_text(json.dumps(result, indent=1) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
