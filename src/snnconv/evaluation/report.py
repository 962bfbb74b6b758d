"""Write an evaluation's results.json, PNG plots and report.md into a folder, atomically: each
file appears complete or not at all, and nothing is written unless every part could be made."""

from __future__ import annotations

import io
import os
from pathlib import Path

from snnconv.evaluation.evaluate import cost_table, layer_table, table
from snnconv.io import checkpoint

PLOTS = ("accuracy_vs_T.png", "layer_error.png", "firing_rate.png", "max_activation.png")


def check_writable(out: str | os.PathLike) -> Path:
    """Raise OSError now, before any work, if ``out`` cannot be created or written."""
    out = Path(out)
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(f"--out {out}: {probe} is not a writable folder")
    return out


def check_plotting() -> None:
    """Raise now, before any work, if plots are asked for and matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            "plots need matplotlib: pip install 'snnconv[plot]', or pass --plots false"
        ) from None


def _figures(results: dict) -> dict[str, bytes]:
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(t) for t in results["snn_accuracy"]]
    last = str(max(steps))
    names = [r["name"] for r in results["layers"]]
    pos = range(len(names))
    figs = {}

    def save(name, fig):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        figs[name] = buf.getvalue()

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [100 * a for a in results["snn_accuracy"].values()], "o-", label="SNN")
    ax.axhline(100 * results["ann_accuracy"], color="k", ls="--", label="ANN")
    ax.set(
        xscale="log",
        xlabel="time steps T",
        ylabel="test accuracy (%)",
        title=f"accuracy vs T (shift={results['shift']})",
    )
    ax.set_xticks(steps, [str(t) for t in steps])
    ax.legend()
    save(PLOTS[0], fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    bottom = [0.0] * len(names)
    for part in ("clipping", "quantisation", "unevenness"):
        vals = [r["error"][last][part] for r in results["layers"]]
        ax.bar(pos, vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.plot(pos, [r["error"][last]["total"] for r in results["layers"]], "k.", label="total")
    ax.set(ylabel="mean |ANN act - SNN rate|", title=f"layer-wise conversion error, T={last}")
    ax.set_xticks(list(pos), names, rotation=90, fontsize=7)
    ax.legend()
    save(PLOTS[1], fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    for t in steps:
        ax.plot(pos, [r["firing_rate"][str(t)] for r in results["layers"]], ".-", label=f"T={t}")
    ax.set(ylabel="spikes per neuron per step", title="firing rate per layer")
    ax.set_xticks(list(pos), names, rotation=90, fontsize=7)
    ax.legend(fontsize=7)
    save(PLOTS[2], fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.bar(pos, [r["max_activation"] for r in results["layers"]], label="max ANN activation")
    ax.plot(
        pos,
        [max(r["v_th"]) if isinstance(r["v_th"], list) else r["v_th"] for r in results["layers"]],
        "r_",
        markersize=14,
        label="V_th",
    )
    ax.set(ylabel="activation", title="max activation per layer")
    ax.set_xticks(list(pos), names, rotation=90, fontsize=7)
    ax.legend()
    save(PLOTS[3], fig)
    return figs


def markdown(results: dict) -> str:
    last = max(int(t) for t in results["snn_accuracy"])
    return "\n".join(
        [
            f"# snnconv evaluation: {results.get('model', '')} on {results.get('dataset', '')}",
            "",
            f"{results['n_images']} test images, threshold={results['threshold']}, "
            f"shift={results['shift']}, readout={results['readout']}, {results['seconds']:.0f} s.",
            "",
            "```",
            table(results),
            "```",
            "",
            f"![accuracy vs T]({PLOTS[0]})",
            "",
            "```",
            layer_table(results, last),
            "```",
            "",
            f"![layer-wise error]({PLOTS[1]})",
            "",
            f"![firing rate]({PLOTS[2]})",
            "",
            f"![max activation]({PLOTS[3]})",
            "",
            "```",
            cost_table(results, last),
            "```",
            "",
            "Energy: MACs x %.2g pJ + SOPs x %.2g pJ (first layer as MACs, once)."
            % (results["cost"]["e_mac_pj"], results["cost"]["e_ac_pj"]),
            "",
        ]
    )


def write(results: dict, out: str | os.PathLike, plots: bool = True) -> list[Path]:
    """Write results.json (and report.md with plots) into ``out``; return the paths written."""
    out = check_writable(out)
    figs = _figures(results) if plots else {}  # made before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, blob in figs.items():
        checkpoint.atomic_write(out / name, lambda f, b=blob: f.write(b))
        written.append(out / name)
    if plots:
        checkpoint.save_text(markdown(results), out / "report.md")
        written.append(out / "report.md")
    checkpoint.save_json(results, out / "results.json")
    written.append(out / "results.json")
    return written
