"""The Markdown documents: every table keeps its shape (one header, one rule, rows with as many
cells as the header), so a row pasted into the wrong table is caught before a reader sees it."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *ROOT.glob("docs/*.md")]
)


def cell_count(row: str) -> int:
    """Cells in a Markdown table row; a code span or an escaped bar may hold a literal '|'."""
    row = re.sub(r"`[^`]*`", "code", row).replace("\\|", "bar")
    return row.strip().strip("|").count("|") + 1


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every run of lines that start with '|'."""
    found, start = [], None
    lines = text.split("\n") + [""]
    for number, line in enumerate(lines, 1):
        if line.startswith("|") and start is None:
            start = number
        elif not line.startswith("|") and start is not None:
            found.append((start, lines[start - 1 : number - 1]))
            start = None
    return found


def shape_errors(text: str) -> list[str]:
    """One line per table row whose cell count differs from its header's, or per table whose
    second line is not the header rule."""
    errors = []
    for start, rows in tables(text):
        width = cell_count(rows[0])
        if len(rows) < 2 or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rows[1].strip()):
            errors.append(f"line {start}: table without a header rule")
        errors += [
            f"line {start + i}: {cell_count(row)} cells, header has {width}"
            for i, row in enumerate(rows)
            if cell_count(row) != width
        ]
    return errors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_table_keeps_its_shape(document):
    assert shape_errors(document.read_text()) == []


def test_a_row_pasted_into_the_wrong_table_is_caught():
    good = "| a | b |\n|---|---:|\n| 1 | `x|y` |\n"
    assert shape_errors(good) == []
    assert shape_errors(good + "| 1 | 2 | 3 |\n") == ["line 4: 3 cells, header has 2"]
    assert shape_errors("| a | b |\n| 1 | 2 |\n") == ["line 1: table without a header rule"]


# ---------------------------------------------------------------- README figures from speed suites


def _suite_report():
    """benchmarks/suite_report.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "suite_report", ROOT / "benchmarks" / "suite_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite_report = _suite_report()
SUITES = [suite_report.Suite(f) for f in sorted((ROOT / "benchmarks/results").glob("suite-*"))]
# a row's label cell: "machine, code, commit"; the machine's name is the writer's choice
LABEL = re.compile(r"\| [^|,]+, ((?:AVX-512|AVX2|SSE2|NEON)(?: emulated)?), ([0-9a-f]{7}) \|")


def _unnamed(row: str) -> str:
    """The row with its label cell's machine name taken out."""
    return LABEL.sub(lambda m: f"| {m.group(1)}, {m.group(2)} |", row)


def test_readme_speed_rows_are_what_their_suite_folder_says():
    """Every simulator and SpikingJelly row of the README labelled with a code and a commit that
    a folder of benchmarks/results/ was measured at is, cell for cell, suite_report's row."""
    rows = {}
    for s in SUITES:
        rows[(s.code, s.commit)] = {
            _unnamed(r) for r in suite_report.sim_rows(s) + suite_report.sj_rows(s)
        }
    checked, wrong = 0, []
    for line in (ROOT / "README.md").read_text().splitlines():
        m = LABEL.search(line)
        if m and (m.group(1), m.group(2)) in rows:
            checked += 1
            if _unnamed(line) not in rows[(m.group(1), m.group(2))]:
                wrong.append(line)
    assert wrong == []
    assert checked >= 20  # the Xeon and Zen 5 rows of both tables are from suite folders


def test_readme_time_to_accuracy_table_is_a_suite_pairs():
    """The README's time-to-accuracy table is suite_report's for one commit's AVX-512 and AVX2
    folders, row for row."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Time to accuracy") + 1
    table = [ln for ln in text[start:].split("\n## ")[0].splitlines() if ln.startswith("| resnet")]
    pairs = [
        suite_report.tta_rows(a, b)
        for a in SUITES
        for b in SUITES
        if a.commit == b.commit and a.code == "AVX-512" and b.code.startswith("AVX2")
    ]
    assert len(table) >= 10 and table in pairs


def test_suite_report_checks_the_targets_both_ways():
    """A figure on the wrong side of its bound is reported missed, whichever way the bound goes."""
    s = suite_report.Suite(ROOT / "benchmarks/results/suite-20261204-avx512-xeon-fresh")
    assert all(met for _, _, met in suite_report.checks(s))  # that run met every target
    s.demo_wall_s, s.sj[0]["sj_fastest_over_snnconv"] = 91.0, 2.9
    missed = [name for name, _, met in suite_report.checks(s) if met is False]
    assert missed == ["spikingjelly_fastest_over_snnconv T=16 >= 3", "demo_wall_s <= 90"]
