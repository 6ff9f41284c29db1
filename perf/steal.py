"""How much CPU time the hypervisor took from us while a figure was measured.

These are shared virtual machines: when a neighbour is busy, the host runs it on our vCPUs and
Linux counts that time as `steal` in /proc/stat. A throughput read under 50% steal is half of
what the software does; a p99 read under steal is the host's scheduling quantum, not ours. Every
measurement in a perf run records the steal share of its own window, so the report can say which
figures were taken on a quiet machine, and paired figures can be compared window by window.
"""
from __future__ import annotations

import time
from pathlib import Path

STAT = Path("/proc/stat")
NOISY = 0.10   # above this share of stolen CPU time, a window's figures are flagged in the report


def cpu_times() -> list[int] | None:
    """The aggregate `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal),
    or None where there is no /proc (the figures are then simply not annotated)."""
    try:
        fields = STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    return [int(v) for v in fields[1:9]] if fields and fields[0] == "cpu" and len(fields) >= 9 else None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """Stolen share of all CPU time between two readings; None if unknown or no time passed."""
    if before is None or after is None:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta)
    return delta[7] / total if total > 0 else None


class Window:
    """`with Window() as w: ...` then `w.steal` is the stolen share of that block's wall time."""
    steal: float | None = None

    def __enter__(self) -> "Window":
        self._start = cpu_times()
        return self

    def __exit__(self, *exc) -> None:
        self.steal = steal_share(self._start, cpu_times())


def wait_quiet(threshold: float = 0.02, max_seconds: float = 15.0, probe_seconds: float = 0.25) -> dict:
    """Probe with a burst of matrix products on every core (steal accrues only while we want the
    CPU) until one burst loses less than `threshold` of its time, or `max_seconds` pass.
    Returns {"waited_s", "steal"} (the last probe's share)."""
    import torch
    a = torch.randn(512, 512)
    start = time.perf_counter()
    while True:
        with Window() as w:
            end = time.perf_counter() + probe_seconds
            while time.perf_counter() < end:
                torch.mm(a, a)
        waited = time.perf_counter() - start
        if w.steal is None or w.steal < threshold or waited >= max_seconds:
            return {"waited_s": round(waited, 2), "steal": w.steal}


def quietest(windows: list):
    """The window measured with the least stolen CPU time (a `steal` key or attribute; unknown
    counts as none), the first of equals. Chosen by steal only, so the choice never favours a
    lucky latency."""
    return min(windows, key=lambda w: (w.get("steal") if isinstance(w, dict) else w.steal) or 0.0)


def measured(fn, *args, **kwargs) -> tuple:
    """fn(*args, **kwargs) and the steal share of its window."""
    with Window() as w:
        value = fn(*args, **kwargs)
    return value, w.steal
