"""Machine facts every benchmark records next to its numbers (stdlib only, so the
neural-tangents oracle environment can import it too)."""

from __future__ import annotations

from pathlib import Path


def cpu_model(default: str = "unknown CPU") -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), or ``default``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
