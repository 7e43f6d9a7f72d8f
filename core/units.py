"""How sizes, counts and durations are written and read, the same in the CLI and the studio."""
from __future__ import annotations

import re
from typing import Optional


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_count(n: float) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.2f}{unit}"
    return f"{n:.0f}"


def parse_size(text: str) -> int:
    """gguf-split sizes: ``500M`` / ``2G`` (decimal units, as llama.cpp), ``K`` too, or plain bytes;
    ValueError with a message for a user otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", str(text).upper())
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"invalid size '{text}': use a positive number with M or G (e.g. 500M)")
    return int(m.group(1)) * {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}[m.group(2)]


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
