"""Bordered tables in the style of eascmd's output."""

from __future__ import annotations

from collections.abc import Sequence


def _border(widths: Sequence[int]) -> str:
    return "+" + "+".join("-" * (w + 2) for w in widths) + "+"


def key_value_table(rows: Sequence[tuple[str, object]]) -> str:
    """Two columns, keys right-aligned (as ``eascmd create`` prints endpoints and token)."""
    cells = [(k, "" if v is None else str(v)) for k, v in rows]
    kw = max((len(k) for k, _ in cells), default=0)
    vw = max((max((len(line) for line in v.splitlines()), default=0) for _, v in cells), default=0)
    out = [_border([kw, vw])]
    for key, value in cells:
        lines = value.splitlines() or [""]
        for i, line in enumerate(lines):
            out.append(f"| {(key if i == 0 else '').rjust(kw)} | {line.ljust(vw)} |")
    out.append(_border([kw, vw]))
    return "\n".join(out)


def grid_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header row and data rows, every cell left-aligned."""
    text = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(headers)]
    line = _border(widths)
    out = [
        line,
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        line,
    ]
    for row in text:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    out.append(line)
    return "\n".join(out)
