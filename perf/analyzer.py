"""Find and run perf_analyzer: the binary in the tritonclient 2.50 wheel, plus the two shared
libraries it links against (libb64, libcudart), which the nvidia-pytriton wheel already ships
under hashed names. We symlink them under their real sonames in a private folder; no apt, no
extra wheel.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from perf.results import LoadPoint
from perf.steal import Window
from server.launcher import BUILD

LIB_DIR = BUILD / "perf_libs"
NEEDED = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}
# Above this many requests in flight, perf_analyzer keeps them in flight from CLIENT_THREADS
# threads (--async) instead of one blocking thread per request. On a 2-vCPU host 64 blocking
# threads take CPU from the server being measured, and in HTTP mode they starved
# perf_analyzer's own measuring thread: half of the `-i http --concurrency-range 64` calls never
# finished their first window while requests kept flowing (gdb: the main thread in malloc behind
# 64 curl threads). With 4 async threads they finished (tests/perf: the c=64 HTTP test).
SYNC_MAX_CONCURRENCY = 4
CLIENT_THREADS = 4


class PerfAnalyzerMissing(RuntimeError):
    """perf_analyzer cannot run here; the message says what to install."""


class PerfAnalyzerTimeout(RuntimeError):
    """perf_analyzer ran past its time limit (on a host losing half its CPU it can chase a
    stable window for minutes); the caller decides whether the run goes on without that point."""


def _wheel_libs() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    libs = Path(pytriton.__file__).resolve().parents[1] / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def binary() -> Path:
    """The perf_analyzer of this environment, or an error naming what to install."""
    for candidate in (Path(sys.executable).parent / "perf_analyzer", shutil.which("perf_analyzer")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise PerfAnalyzerMissing("perf_analyzer not found: it ships in the tritonclient[all]==2.50.0 wheel "
                              "(bin/perf_analyzer); run `make setup`")


def install_libs(dest: Path = LIB_DIR) -> Path:
    """Symlink libb64.so.0d and libcudart.so.12 from nvidia-pytriton's bundled libraries."""
    libs = _wheel_libs()
    if libs is None:
        raise PerfAnalyzerMissing("nvidia-pytriton is not installed, so libb64.so.0d and libcudart.so.12 "
                                  "(needed by perf_analyzer) cannot be found; run `make setup`")
    dest.mkdir(parents=True, exist_ok=True)
    for soname, prefix in NEEDED.items():
        found = sorted(libs.glob(f"{prefix}*"))
        if not found:
            raise PerfAnalyzerMissing(f"{soname}: no {prefix}* in {libs}")
        # A new link under a private name renamed over the old one: two callers at once (threads
        # or processes) never see the name missing or clash on creating it.
        tmp = dest / f".{soname}.{os.getpid()}.{threading.get_ident()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(found[0])
        os.replace(tmp, dest / soname)
    return dest


@functools.lru_cache(maxsize=1)
def _lib_dir() -> Path:
    return install_libs()


def environment() -> dict:
    """The environment perf_analyzer runs in (its bundled libraries on LD_LIBRARY_PATH)."""
    env = dict(os.environ)
    lib = _lib_dir()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def check() -> str:
    """perf_analyzer's version line, or PerfAnalyzerMissing saying exactly what is missing."""
    exe, env = binary(), environment()
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, timeout=30)
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        missing = [line for line in text.splitlines() if "error while loading shared libraries" in line]
        raise PerfAnalyzerMissing(missing[0] if missing else f"perf_analyzer --version failed: {text[-500:]}")
    return text.splitlines()[0] if text else "perf_analyzer"


@dataclass
class PerfRun:
    """One perf_analyzer call: its rows (throughput per second, latencies in ms, one per concurrency), the
    command line and the CPU share stolen by the host during it."""
    command: list[str]
    rows: list[LoadPoint]  # one per concurrency (or request rate), from perf_analyzer's CSV
    output: str
    steal: float | None = None   # the hypervisor's share of CPU time during the call (perf/steal.py)


def run(model: str, url: str, protocol: str, input_data: Path, csv_path: Path, *, batch: int = 1,
        concurrency: str = "1", interval_ms: int = 2000, extra: tuple[str, ...] = (),
        timeout_s: float = 600) -> PerfRun:
    """One perf_analyzer sweep; the CSV (with --verbose-csv latencies) is parsed into rows.

    On a noisy 2-core machine p99 may not settle within the stability band; then the sweep is
    repeated once with the band opened wide, and its rows say `stable=False`."""
    exe = binary()
    most = max(int(c) for c in concurrency.split(":")[:2])
    client = ("--async", "--max-threads", str(CLIENT_THREADS)) if most > SYNC_MAX_CONCURRENCY else ()
    base = [str(exe), "-m", model, "-u", url, "-i", protocol, "-b", str(batch),
            "--input-data", str(input_data), "--concurrency-range", concurrency,
            "--measurement-interval", str(interval_ms), "--percentile", "99", "--max-trials", "8",
            "-f", str(csv_path), "--verbose-csv", *client, *extra]
    for stable, band in ((True, "50"), (False, "1000")):
        cmd = [*base, "--stability-percentage", band]
        with Window() as window:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise PerfAnalyzerTimeout(f"perf_analyzer did not finish in {timeout_s:.0f} s (steal "
                                          f"{window.steal if window.steal is not None else 'unknown'}): "
                                          f"{' '.join(cmd)}") from None
        text = out.stdout + out.stderr
        if out.returncode == 0:
            rows = [r.measured(stable, window.steal) for r in parse_csv(csv_path.read_text())]
            return PerfRun(cmd, rows, text, window.steal)
        if "stable measurement" not in text:
            break
    raise RuntimeError(f"perf_analyzer failed ({out.returncode}):\n{' '.join(cmd)}\n{text[-3000:]}")


def parse_csv(text: str) -> list[LoadPoint]:
    """perf_analyzer's CSV -> one LoadPoint per concurrency (its microseconds in ms)."""
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        if not r.get("Concurrency"):
            continue
        us = lambda k: float(r[k]) / 1000 if r.get(k) not in (None, "") else None  # noqa: E731
        rows.append(LoadPoint(concurrency=int(float(r["Concurrency"])), throughput=float(r["Inferences/Second"]),
                              p50_ms=us("p50 latency"), p90_ms=us("p90 latency"), p95_ms=us("p95 latency"),
                              p99_ms=us("p99 latency"), avg_ms=us("Avg latency"),
                              server_queue_ms=us("Server Queue"), server_compute_ms=us("Server Compute Infer")))
    return rows
