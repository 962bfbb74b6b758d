"""The Markdown documents: every table keeps its shape (one header, one rule, rows with as many
cells as the header), so a row pasted into the wrong table is caught before a reader sees it."""

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
