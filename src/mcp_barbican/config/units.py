"""Parsing of the config file's durations ("30s", "1h30m") and sizes ("4MiB", "100kb").

Both parsers raise ValueError with a message meant for a human; the config loader adds
the key path.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration", "parse_size"]

_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_HELP = "use seconds (30) or a number with ms, s, m, h or d (250ms, 30s, 5m, 1h30m, 2d)"

# KB/MB/GB are decimal (SI); KiB/MiB/GiB and nginx-style k/m/g are binary.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SIZE_HELP = "use bytes (4194304) or a number with B, KB, MB, GB, KiB, MiB or GiB (4MiB, 512KiB, 100kb)"


def parse_duration(value: object) -> float:
    """Return `value` in seconds: a number of seconds, or a string such as "30s" or "1h30m"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
    if isinstance(value, int | float):
        return _non_negative_seconds(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
    text = value.strip().lower()
    if text.startswith("-"):
        raise ValueError(f"duration {value!r} must not be negative")
    try:
        return _non_negative_seconds(float(text), value)
    except ValueError:
        pass
    if not _DURATION_FULL.fullmatch(text):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """A duration as a user writes it and `parse_duration` reads it back: 600.0 → "600s", 0.25 → "0.25s"."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0") + "s"


def _non_negative_seconds(seconds: float, original: object) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {original!r}: {_DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"duration {original!r} must not be negative")
    return seconds


def parse_size(value: object) -> int:
    """Return `value` in bytes: an integer, or a string such as "4MiB", "512KiB" or "1MB"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: {_SIZE_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value!r} must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: {_SIZE_HELP}")
    text = value.strip().lower()
    if text.startswith("-"):
        raise ValueError(f"size {value!r} must not be negative")
    match = _SIZE.fullmatch(text)
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: {_SIZE_HELP}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit])
