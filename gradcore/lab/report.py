"""What an experiment returns (a Section of Tables, notes, plots and raw numbers) and how
it is printed on the console, written to ``report.md`` and to ``results.json``."""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..monitor.diagnosis import json_safe


def format_value(value) -> str:
    """A number as a table shows it: integers as they are, floats with 4 decimals between
    1e-3 and 1e4 and in scientific notation outside, non-finite values as nan / inf."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if v == 0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4f}"
        return f"{v:.3e}"
    return str(value)


def markdown_text(text: str) -> str:
    """``text`` for Markdown: asterisks outside `code spans` escaped (a label such as
    "randn*10" must not open an emphasis)."""
    parts = text.split("`")
    return "`".join(p.replace("*", "\\*") if i % 2 == 0 else p for i, p in enumerate(parts))


@dataclass
class Table:
    """A titled table: ``columns`` (names) and ``rows`` (lists of numbers or strings)."""

    title: str
    columns: List[str]
    rows: List[List[Any]] = field(default_factory=list)
    note: Optional[str] = None

    def add(self, *cells) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"Table {self.title!r}: a row needs {len(self.columns)} cells, got {len(cells)}")
        self.rows.append(list(cells))

    def _cells(self) -> List[List[str]]:
        return [[format_value(c) for c in row] for row in self.rows]

    def to_text(self) -> str:
        """Aligned plain text for the console: text columns left, numbers right."""
        cells = self._cells()
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        numeric = [all(isinstance(row[i], numbers.Number) or row[i] is None for row in self.rows)
                   for i in range(len(self.columns))]

        def line(row):
            return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

        out = [self.title, line(self.columns), line(["-" * w for w in widths])]
        out += [line(r) for r in cells]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def to_markdown(self) -> str:
        def row(cells):
            return "| " + " | ".join(markdown_text(c).replace("|", "\\|") for c in cells) + " |"

        out = [f"**{markdown_text(self.title)}**", "", row(self.columns),
               "|" + "|".join("---" for _ in self.columns) + "|"]
        out += [row(cells) for cells in self._cells()]
        if self.note:
            out += ["", markdown_text(self.note)]
        return "\n".join(out)

    def to_dict(self) -> Dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": self.rows, "note": self.note}


@dataclass
class Section:
    """One experiment's output. ``texts`` are preformatted blocks ({"title", "text"},
    e.g. a diagnosis as ``str(d)`` prints it), ``data`` holds the raw numbers for
    results.json, ``plots`` the PNG files written (names relative to the output folder),
    ``missing`` the gradcore pieces the experiment had to do without."""

    name: str
    title: str
    setup: str
    tables: List[Table] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    texts: List[Dict[str, str]] = field(default_factory=list)
    plots: List[Dict[str, str]] = field(default_factory=list)
    data: Dict[str, Any] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)

    def to_text(self) -> str:
        out = [f"== {self.name}: {self.title}", self.setup, ""]
        for table in self.tables:
            out += [table.to_text(), ""]
        for block in self.texts:
            out += [f"{block['title']}:", block["text"].rstrip(), ""]
        out += [f"* {note}" for note in self.notes]
        out += [f"* missing: {m}" for m in self.missing]
        out += [f"* plot: {p['file']} ({p['title']})" for p in self.plots]
        return "\n".join(out).rstrip() + "\n"

    def to_markdown(self) -> str:
        out = [f"## {self.name}: {markdown_text(self.title)}", "", markdown_text(self.setup), ""]
        for table in self.tables:
            out += [table.to_markdown(), ""]
        for block in self.texts:
            out += [f"**{markdown_text(block['title'])}**", "", "```", block["text"].rstrip(), "```", ""]
        out += [f"- {markdown_text(note)}" for note in self.notes]
        out += [f"- *Not run:* {markdown_text(m)}" for m in self.missing]
        if self.notes or self.missing:
            out.append("")
        for p in self.plots:
            out += [f"![{markdown_text(p['title'])}]({p['file']})", ""]
        return "\n".join(out)

    def to_dict(self) -> Dict[str, Any]:
        return {"title": self.title, "setup": self.setup, "tables": [t.to_dict() for t in self.tables],
                "notes": list(self.notes), "texts": list(self.texts), "missing": list(self.missing),
                "plots": list(self.plots), "data": self.data}


def write_results(path: str, results: Dict[str, Any]) -> None:
    """results.json: strict JSON, keys in insertion order, stable across runs of a seed."""
    with open(path, "w") as f:
        json.dump(json_safe(results), f, indent=1, allow_nan=False)
        f.write("\n")


def write_report(path: str, header: Sequence[str], sections: Sequence[Section]) -> None:
    """report.md: the header lines, then each section's setup, tables, notes and plots."""
    parts = list(header) + [""] + [s.to_markdown() for s in sections]
    with open(path, "w") as f:
        f.write("\n".join(parts).rstrip() + "\n")

