"""How many CPU cores this process may use (the one place that asks the operating system)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def logical_cores() -> int:
    """All the machine's logical CPUs (the process may be held to fewer: `usable_cores`), at least 1."""
    return max(1, os.cpu_count() or 1)
