"""Reports: Rich tables for the terminal, JSON documents and Markdown files.

One module per command's report (``inspect``, ``score``, ``attenuate``, ``eval``) plus the model
card; this module holds the small formatting helpers they share. Nothing here computes a metric
or a score: reports only lay out numbers the library already produced.

The document builders (``*_document``, ``*_markdown``, ``model_card``) are library code that the
flows call; the ``render_*`` functions draw Rich tables for the CLI and import Rich inside
themselves, so importing a report module never loads Rich (tests/test_library_boundary.py).
"""

from __future__ import annotations

import math

from ucan_cli.report.inspect import inspect_document, render_inspect

__all__ = ["fmt", "inspect_document", "render_inspect"]


def fmt(value, digits: int = 4) -> str:
    """A compact human rendering of a number (None -> 'n/a'; 4 significant digits by default)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)
