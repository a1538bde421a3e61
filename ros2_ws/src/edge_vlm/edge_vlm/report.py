"""Text formatting of measured values, shared by every report (eval, bench, COCO, paper table,
demo): one rule for missing values, booleans, floats and lists."""
from __future__ import annotations

from typing import Any


def fmt_value(v: Any, digits: int = 4, *, fixed: bool = False, spec: str | None = None,
              none: str = "n/a", grouped: bool = True) -> str:
    """``v`` as report text: ``none`` for None, yes/no for booleans, a float with ``digits``
    significant digits (``fixed``: digits after the point; 1,000 and more without decimals,
    digits grouped, unless ``grouped`` is False), lists element by element; ``spec``: Python's
    format spec instead (e.g. ``".1%"``)."""
    if v is None:
        return none
    if spec is not None:
        return format(v, spec)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if fixed:
            return f"{v:.{digits}f}"
        return f"{v:.{digits}g}" if abs(v) < 1000 or not grouped else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x, digits, fixed=fixed, none=none, grouped=grouped)
                               for x in v) + "]"
    return str(v)
