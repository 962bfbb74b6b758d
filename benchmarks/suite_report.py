"""What a speed-suite folder says: the README's rows, the time-to-accuracy headline, and whether
issue 14's targets hold.

    python benchmarks/suite_report.py benchmarks/results/suite-DATE-ISA [SUITE_AVX2 ...]

Reads the files `bash benchmarks/speed_suite.sh` writes (machine.txt, demo.txt, the JSON lines at
the end of sim_speed.txt and spikingjelly_compare.txt, time_to_accuracy.json) and prints, per
folder, the rows of the README's simulator and SpikingJelly tables (labelled "machine, code,
commit"; ``--machine`` names the machine where the CPU's model name does not, say "Zen 5"), the
demo's wall time, the time-to-accuracy headline, and TARGETS, each met or missed. Given two
folders of one commit (this CPU's code and the AVX2 code), it also prints the README's time-to-
accuracy table with the second one's column. Prints only: the figures are the suite's.
tests/test_docs.py checks the README's rows against it.

The targets are issue 14's, for an AVX2-only machine: a folder measured with AVX-512 code, or with
AVX2 code emulated on an AVX-512 CPU, is reported against them but does not settle them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

FULL_TTA_MODEL = "resnet20-cifar10-relu"  # the model both tools convert in time_to_accuracy

# (what, bound, kind): kind "min" means the figure must be >= bound, "max" <= bound
TARGETS = {
    "spikingjelly_fastest_over_snnconv": (3.0, "min"),  # issue 14, point 1, T=16 and T=32
    "ratio_dense resnet20": (0.6, "max"),  # point 2, T=16 and T=32
    "ratio_dense vgg16-paper": (0.8, "max"),  # point 2
    "speedup_naive": (1.0, "min"),  # point 2: never slower than the naive per-step loop
    "demo_wall_s": (90.0, "max"),  # point 3: fresh clone, kernel build and data load included
    "time_to_accuracy_ratio": (10.0, "min"),  # point 4: SpikingJelly's time / snnconv's
}


def last_json(path: Path) -> dict:
    """The last line of ``path`` that is a JSON object (the benchmarks end with one)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"suite_report: {path} has no JSON line (an unfinished run?)")
    return json.loads(lines[-1])


def code_label(code: str) -> str:
    """machine.txt's code line as the README writes it: AVX-512, AVX2, AVX2 emulated, ..."""
    isa = code.split()[0]
    name = {"avx512": "AVX-512", "avx2": "AVX2", "sse2": "SSE2", "neon": "NEON"}.get(isa, isa)
    return name + (" emulated" if "emulated" in code else "")


class Suite:
    """One folder of speed_suite.sh's outputs."""

    def __init__(self, folder: Path, machine: str | None = None):
        self.folder = folder
        info = dict(
            ln.split(":", 1)
            for ln in (folder / "machine.txt").read_text().splitlines()
            if ":" in ln
        )
        model = " ".join(info.get("Model name", "unknown CPU").split())
        self.cpu = model
        self.flags = info.get("flags", "").split()
        self.code = code_label(info["code"].strip())
        self.commit = info["commit"].split()[0]
        short = re.sub(r"\((R|TM)\)|\b(Processor|CPU)\b|Intel|AMD", "", model).strip()
        self.label = f"{machine or short}, {self.code}, {self.commit}"
        # timing rows only (the memory rows have no times)
        self.sim = [r for r in last_json(folder / "sim_speed.txt")["results"] if "times_s" in r]
        self.sj = last_json(folder / "spikingjelly_compare.txt")["rows"]
        self.tta = json.loads((folder / "time_to_accuracy.json").read_text())["rows"]
        # time_to_accuracy's targets, as the run wrote them: within 1 point, within 0.5 point
        self.within = sorted({r["within"] for r in self.tta}, reverse=True)
        wall = re.search(r"^wall ([0-9.]+) s", (folder / "demo.txt").read_text(), re.M)
        self.demo_wall_s = float(wall.group(1)) if wall else None

    @property
    def avx2_only(self) -> bool:
        return "avx2" in self.flags and "avx512f" not in self.flags and "emulated" not in self.code


def sim_rows(s: Suite) -> list[str]:
    """The README's simulator-performance rows: dense ms, snnconv s (range), naive s, ratios."""
    out = []
    for r in s.sim:
        t = r["times_s"]
        a, b, c = t["a_dense"], t["b_snnconv"], t["c_naive"]
        out.append(
            f"| {r['model']} | {r['T']} | {s.label} | {a['median'] * 1e3:.1f} | "
            f"{b['median']:.3f} ({b['min']:.3f}-{b['max']:.3f}) | {c['median']:.3f} | "
            f"{r['ratio_dense']:.2f} | {r['speedup_naive']:.2f} |"
        )
    return out


def ms(seconds: float, spread: list[float]) -> str:
    return f"{seconds * 1e3:.0f} ({spread[0] * 1e3:.0f}-{spread[1] * 1e3:.0f})"


def sj_rows(s: Suite) -> list[str]:
    """The README's SpikingJelly-comparison rows, ms per batch of 128 (min-max)."""
    return [
        f"| {r['T']} | {s.label} | {ms(r['snnconv_s'], r['snnconv_range_s'])} | "
        f"{ms(r['sj_single_s'], r['sj_single_range_s'])} | "
        f"{ms(r['sj_multi_s'], r['sj_multi_range_s'])} | "
        f"{r['sj_fastest_over_snnconv']:.2f} | {r['snnconv_over_T_dense']:.2f} |"
        for r in s.sj
    ]


def headline(s: Suite) -> dict | None:
    """snnconv's fastest row and SpikingJelly's on the ReLU model within 1 point of its ANN:
    their seconds per 10,000 images, the ratio, and the ratio of snnconv's slower pass to
    SpikingJelly's faster one. None when either tool has no row that gets there."""
    rows = [r for r in s.tta if r["model"] == FULL_TTA_MODEL and r["within"] == s.within[0]]
    best = {}
    for tool in ("snnconv", "spikingjelly"):
        reached = [r for r in rows if r["reached"] and r["tool"].startswith(tool)]
        if not reached:
            return None
        best[tool] = min(reached, key=lambda r: r["seconds"])
    ours, theirs = best["snnconv"], best["spikingjelly"]
    worst_ours, best_theirs = max(ours["pass_medians"]), min(theirs["pass_medians"])
    return {
        "snnconv": ours,
        "spikingjelly": theirs,
        "ratio": theirs["seconds"] / ours["seconds"],
        "worst_pass_ratio": best_theirs / worst_ours,
        "worst_pass_s": (worst_ours, best_theirs),
    }


def checks(s: Suite) -> list[tuple[str, float | None, bool | None]]:
    """(target, figure, met) for every figure of TARGETS this folder holds."""
    found = []
    for r in s.sj:
        found.append(
            (f"spikingjelly_fastest_over_snnconv T={r['T']}", r["sj_fastest_over_snnconv"])
        )
    for r in s.sim:
        key = f"ratio_dense {r['model']}"
        if key in TARGETS:
            found.append((f"{key} T={r['T']}", r["ratio_dense"]))
        found.append((f"speedup_naive {r['model']} T={r['T']}", r["speedup_naive"]))
    found.append(("demo_wall_s", s.demo_wall_s))
    top = headline(s)
    found.append(("time_to_accuracy_ratio", top["ratio"] if top else None))
    out = []
    for name, value in found:
        bound, kind = next(v for k, v in TARGETS.items() if name.startswith(k))
        met = None if value is None else (value >= bound if kind == "min" else value <= bound)
        out.append((f"{name} {'>=' if kind == 'min' else '<='} {bound:g}", value, met))
    return out


def tta_cell(r: dict | None, spread: bool = True) -> str:
    """A time-to-accuracy cell: "T=8, 29.3 (29.1-29.4)", or where the target is not reached
    "not reached by T=64" (with SpikingJelly's lower bound where it was timed)."""
    if r is None:
        return "—"
    if not r["reached"]:
        bound = f" (> {r['seconds']:.1f} s at T={r['timed_T']})" if r.get("seconds") else ""
        return f"not reached by T={r.get('last_T', 64)}" + bound  # older runs: the grid's 64
    cell = f"T={r['T']}, {r['seconds']:.1f}"
    return cell + (f" ({r['min']:.1f}-{r['max']:.1f})" if spread else "")


def tta_rows(s: Suite, other: Suite | None) -> list[str]:
    """The README's time-to-accuracy rows: per model and method, the within-1-point cell, the
    other folder's, the within-0.5-point cell and what the row costs once."""
    key = lambda r: (r["model"], r["method"], r["within"])  # noqa: E731
    theirs = {key(r): r for r in other.tta} if other else {}
    ours = {key(r): r for r in s.tta}
    out = []
    for r in s.tta:
        if r["within"] != s.within[0]:
            continue
        half = ours.get((r["model"], r["method"], s.within[-1]))
        method = r["method"]
        if method.startswith("spikingjelly "):
            method = f"SpikingJelly `{method.removeprefix('spikingjelly ')}`"
        once = "—"  # also where an older run did not time the conversion
        if r["reached"] and r.get("conversion_seconds") is not None:
            once = f"{r['conversion_seconds']:.1f}"
            if r.get("calibration_seconds"):
                once += f" + {r['calibration_seconds']:.0f}"
        cells = [r["model"], method, f"{r['ann'] * 100:.2f}", tta_cell(r)]
        if other:
            cells.append(tta_cell(theirs.get(key(r)), spread=False))
        cells += [tta_cell(half), once]
        out.append("| " + " | ".join(cells) + " |")
    return out


def report(s: Suite) -> list[str]:
    lines = [f"== {s.folder}: {s.cpu}, {s.code} code, commit {s.commit}"]
    lines += ["simulator rows:", *sim_rows(s), "SpikingJelly rows:", *sj_rows(s)]
    lines.append(f"demo wall: {s.demo_wall_s} s")
    top = headline(s)
    if top:
        a, b = top["snnconv"], top["spikingjelly"]
        worst, best = top["worst_pass_s"]
        lines.append(
            f"time to within 1 point ({FULL_TTA_MODEL}): snnconv {a['method']} T={a['T']} "
            f"{a['seconds']:.1f} s, SpikingJelly {b['method'].removeprefix('spikingjelly ')} "
            f"T={b['T']} {b['seconds']:.1f} s: "
            f"{top['ratio']:.1f}x (snnconv's slower pass against SpikingJelly's faster: "
            f"{worst:.1f} s against {best:.1f} s, {top['worst_pass_ratio']:.1f}x)"
        )
    where = "an AVX2-only machine" if s.avx2_only else "not an AVX2-only machine: does not settle"
    lines.append(f"issue 14 targets ({where}):")
    for name, value, met in checks(s):
        verdict = "not measured" if met is None else ("met" if met else "MISSED")
        lines.append(f"  {name}: {'—' if value is None else f'{value:.2f}'} {verdict}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--machine", help="the machine's name in the rows' labels (e.g. 'Zen 5')")
    args = p.parse_args(argv)
    suites = [Suite(f, args.machine) for f in args.folders]
    for s in suites:
        print("\n".join(report(s)))
    if len(suites) == 2 and suites[0].commit == suites[1].commit:
        print(f"time-to-accuracy rows ({suites[0].code}, then {suites[1].code}):")
        print("\n".join(tta_rows(suites[0], suites[1])))


if __name__ == "__main__":
    main()
