"""Plain-text tables for the command-line reports (one helper instead of one printer per script)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def format_rows(header: Sequence[str], rows: Iterable[Sequence[str]], left: Iterable[int] = (0,)) -> str:
    """``header`` and ``rows`` (cells already formatted as strings) as ``a | b | c`` lines under a ``-+-`` rule.

    Columns whose index is in ``left`` are left-aligned (names), the others right-aligned (numbers).
    """
    rows = [[str(c) for c in r] for r in rows]
    header = [str(h) for h in header]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"a row has {len(r)} cells, the header {len(header)}: {r}")
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    left = set(left)

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return " | ".join(padded).rstrip()

    return "\n".join([line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows])
