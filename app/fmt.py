"""Text formatting for the views (the CLI's own formatters, plus a few for table cells)."""
from __future__ import annotations

import math
from typing import Optional

from core.units import format_duration, human_bytes, human_count  # noqa: F401  (one way everywhere)


def num(x: Optional[float], digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return "–" if math.isnan(x) else ("∞" if x > 0 else "-∞")
    return f"{x:.{digits}g}"


def pct(x: Optional[float], digits: int = 3) -> str:
    if x is None:
        return ""
    if not math.isfinite(x):
        return num(x)
    return f"{100 * x:.{digits}g} %"


def db(x: Optional[float]) -> str:
    if x is None:
        return ""
    return "∞ dB" if x == math.inf else f"{x:.1f} dB"


def shape(s) -> str:
    return " × ".join(str(d) for d in s) if s else "scalar"


def short_value(v, limit: int = 120) -> str:
    """A metadata value as one short line (long arrays summarised)."""
    if isinstance(v, (list, tuple)):
        head = ", ".join(short_value(x, 24) for x in v[:8])
        more = f", … ({len(v)} items)" if len(v) > 8 else ""
        return f"[{head}{more}]"
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, float) and not isinstance(v, bool):
        v = float_text(v)
    s = str(v).replace("\n", "⏎")
    return s if len(s) <= limit else s[:limit - 1] + "…"


def float_text(v: float) -> str:
    """The shortest text of a float, as float32 when it is one (GGUF keeps most floats as float32:
    1e-05, not 9.999999747378752e-06)."""
    import numpy as np
    f32 = np.float32(v)
    return repr(float(v)) if not math.isfinite(v) or float(f32) != v else str(f32)
