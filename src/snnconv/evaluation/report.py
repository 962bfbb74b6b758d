"""Tables, plots, report.md and the output folder of an evaluation (from its Results).

``write(results, out)`` replaces the folder ``out`` as a whole: the set (results.json, report.md,
and with plots four PNGs) is written and synced into a new hidden sibling folder, which is then
swapped in for ``out`` (one atomic exchange on Linux; elsewhere ``out`` is renamed away, the new
folder renamed in and the old one removed). A failure or a kill leaves the previous set or the
new one at ``out``, never a mix, and a rerun without plots leaves no stale plots. Because the
folder is replaced, ``out`` must be new, empty, or hold only files of such a set.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from snnconv.evaluation.results import LayerResult, Results

RESULTS = "results.json"
REPORT = "report.md"
PLOTS = ("accuracy_vs_T.png", "layer_error.png", "firing_rate.png", "max_activation.png")
OUTPUTS = (RESULTS, REPORT, *PLOTS)
_STALE = re.compile(r"\.(?P<name>.+)\.snnconv-(?P<pid>\d+)-[^.]*\.(new|old)")


# ----------------------------------------------------------------------------- text tables


def steps_note(shift: str, steps: list[int]) -> str:
    if shift == "bias":
        return (
            f"shift=bias: the shift V_th/(2T) depends on T, so each T is its own run "
            f"({sum(steps)} steps in all)"
        )
    return f"shift={shift}: one run of {max(steps)} steps gives every T"


def calibration_note(results: Results) -> str:
    """One line on the post-conversion calibration (empty when there was none)."""
    c = results.calibration
    if c is None:
        return ""
    return (
        f"Calibrated ({c.method}, per {c.granularity}) for T={c.T} on {c.images} training "
        f"images in {c.seconds:.0f} s; every T runs with these corrections (fitted for T={c.T})."
    )


def _ratio(value: float | None, width: int) -> str:
    return f"{value:{width}.3f}" if value is not None else f"{'n/a':>{width}}"


def table(results: Results) -> str:
    """Accuracy and cost per T as aligned text."""
    ann = results.ann_accuracy
    lines = [
        f"{'T':>6}  {'SNN acc':>8}  {'gap':>7}  {'SOPs/img':>10}  {'energy SNN/ANN':>14}",
        f"{'ANN':>6}  {100 * ann:7.2f}%  {'':>7}  {results.cost.ann_macs:10.3g}  {'(MACs)':>14}",
    ]
    for t in results.steps:
        acc, c = results.snn_accuracy[t], results.cost.per_T[t]
        lines.append(
            f"{t:>6}  {100 * acc:7.2f}%  {100 * (acc - ann):+6.2f}  {c.sops:10.3g}  "
            f"{_ratio(c.energy_ratio, 14)}"
        )
    return "\n".join(lines)


def _v_th(row: LayerResult) -> float:
    return max(row.v_th) if isinstance(row.v_th, list) else row.v_th


def layer_table(results: Results, steps: int) -> str:
    """Per IF layer at T = ``steps``: V_th, max activation, rate and the error split."""
    t = steps
    head = (
        f"{'layer':<22}{'V_th':>7}{'max act':>9}{'rate':>7}{'total':>9}{'clip':>9}"
        f"{'quant':>9}{'uneven':>9}"
    )
    lines = [f"layer-wise error at T={t} (mean |ANN activation - SNN rate|)", head]
    for r in results.layers:
        if t not in r.error:  # evaluated without the ANN's activations: rates only
            lines.append(f"{r.name[:21]:<22}{_v_th(r):7.3g}{'':>9}{r.firing_rate[t]:7.3f}")
            continue
        e = r.error[t]
        lines.append(
            f"{r.name[:21]:<22}{_v_th(r):7.3g}{r.max_activation:9.3g}"
            f"{r.firing_rate[t]:7.3f}{e.total:9.4f}{e.clipping:9.4f}"
            f"{e.quantisation:9.4f}{e.unevenness:9.4f}"
        )
    if t in results.largest_error_growth:
        lines.append(f"error grows most at layer {results.largest_error_growth[t]}")
    return "\n".join(lines)


def cost_table(results: Results, steps: int) -> str:
    t = steps
    lines = [
        f"cost per image at T={t}: ANN MACs vs SNN MACs (analog input) + SOPs",
        f"{'layer':<22}{'ANN MACs':>12}{'SNN MACs':>12}{'SOPs':>12}{'energy SNN/ANN':>16}",
    ]
    for r in results.cost.layers:
        ratio = r.energy_snn_pj[t] / r.energy_ann_pj if r.energy_ann_pj else None
        lines.append(
            f"{r.name[:21]:<22}{r.ann_macs:12.4g}{r.snn_macs:12.4g}{r.sops[t]:12.4g}"
            f"{_ratio(ratio, 16)}"
        )
    return "\n".join(lines)


def markdown(results: Results, plots: bool = True) -> str:
    last = results.steps[-1]
    image = lambda alt, name: [f"![{alt}]({name})", ""] if plots else []
    errors = any(r.error for r in results.layers)
    return "\n".join(
        [
            f"# snnconv evaluation: {results.model or ''} on {results.dataset or ''}",
            "",
            f"{results.n_images} test images, threshold={results.threshold}, "
            f"shift={results.shift}, neuron={results.neuron}, readout={results.readout}, "
            f"{results.seconds:.0f} s.",
            "",
            *([calibration_note(results), ""] if results.calibration else []),
            "```",
            table(results),
            "```",
            "",
            *image("accuracy vs T", PLOTS[0]),
            "```",
            layer_table(results, last),
            "```",
            "",
            *(image("layer-wise error", PLOTS[1]) if errors else []),
            *image("firing rate", PLOTS[2]),
            *(image("max activation", PLOTS[3]) if errors else []),
            "```",
            cost_table(results, last),
            "```",
            "",
            f"Energy: MACs x {results.cost.e_mac_pj:.2g} pJ + SOPs x "
            f"{results.cost.e_ac_pj:.2g} pJ (first layer as MACs, once).",
            "",
        ]
    )


# ----------------------------------------------------------------------------- plots


def check_plotting() -> None:
    """Raise now, before any work, if plots are asked for and matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            "plots need matplotlib: pip install 'snnconv[plot]', or pass --plots false"
        ) from None


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _layer_axes(plt, names: list[str], title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.set(ylabel=ylabel, title=title)
    ax.set_xticks(list(range(len(names))), names, rotation=90, fontsize=7)
    return fig, ax


def _accuracy_plot(plt, results: Results) -> bytes:
    steps = results.steps
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [100 * results.snn_accuracy[t] for t in steps], "o-", label="SNN")
    ax.axhline(100 * results.ann_accuracy, color="k", ls="--", label="ANN")
    ax.set(xscale="log", xlabel="time steps T", ylabel="test accuracy (%)")
    ax.set(title=f"accuracy vs T (shift={results.shift}, neuron={results.neuron})")
    ax.set_xticks(steps, [str(t) for t in steps])
    ax.legend()
    return _png(fig)


def _error_plot(plt, results: Results) -> bytes:
    last, layers = results.steps[-1], results.layers
    names = [r.name for r in layers]
    fig, ax = _layer_axes(
        plt, names, f"layer-wise conversion error, T={last}", "mean |ANN act - SNN rate|"
    )
    pos, bottom = range(len(names)), [0.0] * len(names)
    for part in ("clipping", "quantisation", "unevenness"):
        vals = [getattr(r.error[last], part) for r in layers]
        ax.bar(pos, vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.plot(pos, [r.error[last].total for r in layers], "k.", label="total")
    ax.legend()
    return _png(fig)


def _rate_plot(plt, results: Results) -> bytes:
    names = [r.name for r in results.layers]
    fig, ax = _layer_axes(plt, names, "firing rate per layer", "spikes per neuron per step")
    for t in results.steps:
        ax.plot(range(len(names)), [r.firing_rate[t] for r in results.layers], ".-", label=f"T={t}")
    ax.legend(fontsize=7)
    return _png(fig)


def _activation_plot(plt, results: Results) -> bytes:
    layers = results.layers
    fig, ax = _layer_axes(plt, [r.name for r in layers], "max activation per layer", "activation")
    pos = range(len(layers))
    ax.bar(pos, [r.max_activation for r in layers], label="max ANN activation")
    ax.plot(pos, [_v_th(r) for r in layers], "r_", markersize=14, label="V_th")
    ax.legend()
    return _png(fig)


def figures(results: Results) -> dict[str, bytes]:
    """The PNG plots by file name (those of the layer errors only when they were measured)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = all(r.error for r in results.layers) and results.layers
    makers = {PLOTS[0]: _accuracy_plot, PLOTS[2]: _rate_plot}
    if errors:
        makers.update({PLOTS[1]: _error_plot, PLOTS[3]: _activation_plot})
    return {name: make(plt, results) for name, make in sorted(makers.items())}


# ----------------------------------------------------------------------------- the output folder


def check_writable(out: str | os.PathLike, outputs: tuple[str, ...] = OUTPUTS) -> Path:
    """``out`` (absolute; a symlink followed) if a set of ``outputs`` can replace it; else OSError
    now, before any work: its parent cannot be created or written, ``out`` is a file, holds other
    files, or is the current folder or one above it."""
    out = Path(out).expanduser().resolve()
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(f"--out {out}: {probe} is not a writable folder")
    if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
        raise OSError(f"--out {out}: the output folder is replaced as a whole; not the current one")
    if out.exists():
        if not out.is_dir():
            raise OSError(f"--out {out}: not a writable folder (a file is there)")
        other = sorted(p.name for p in out.iterdir() if not _ours(p.name, outputs))
        if other:
            raise OSError(
                f"--out {out} holds files snnconv did not write there ({', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}): the folder is replaced as a whole, so "
                "give a new or empty one"
            )
    return out


def _ours(name: str, outputs: tuple[str, ...]) -> bool:
    """One of the set, or the temp file of an atomic write of one (left by a kill)."""
    return name in outputs or any(
        name.startswith(f".{o}.") and name.endswith(".tmp") for o in outputs
    )


def _write_file(path: Path, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not
    available (other systems, old kernels, some filesystems)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap(new: Path, out: Path) -> None:
    """Put folder ``new`` at ``out``; whatever was at ``out`` is removed."""
    if not out.exists():
        os.rename(new, out)
    elif _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # now the old set
    else:
        old = new.with_suffix(".old")
        os.rename(out, old)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)


def _remove_stale(out: Path) -> None:
    """Remove the temp folders of earlier writes to ``out`` whose process is gone (killed)."""
    for p in out.parent.glob(f".{out.name}.snnconv-*"):
        m = _STALE.fullmatch(p.name)
        if not (m and m["name"] == out.name and p.is_dir()):
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass  # alive, someone else's


def write_set(
    files: dict[str, bytes], out: str | os.PathLike, outputs: tuple[str, ...] | None = None
) -> list[Path]:
    """Replace folder ``out`` by one holding exactly ``files`` (name -> bytes); all or nothing.
    ``outputs``: every name a set of this kind may hold (default: those of ``files``); a folder
    with other files is refused (check_writable)."""
    out = check_writable(out, tuple(files) if outputs is None else outputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        _remove_stale(out)
    prefix = f".{out.name}.snnconv-{os.getpid()}-"
    new = Path(tempfile.mkdtemp(prefix=prefix, suffix=".new", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(new, 0o777 & ~umask)  # as a plain mkdir would make it
        for name, blob in files.items():
            _write_file(new / name, blob)
        _fsync_dir(new)
        _swap(new, out)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return [out / name for name in files]


def write(results: Results, out: str | os.PathLike, plots: bool = True) -> list[Path]:
    """Replace folder ``out`` by results.json, report.md and (``plots``) the PNGs; everything is
    made before anything is written. Returns the paths written."""
    files = {RESULTS: results.to_json().encode()}  # SimulationError here if not finite
    files[REPORT] = markdown(results, plots).encode()
    if plots:
        files.update(figures(results))
    return write_set(files, out, OUTPUTS)
