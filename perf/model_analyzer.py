"""Triton Model Analyzer (`model-analyzer profile`) on the embedded server: local launch mode,
our tritonserver binary (the nvidia-pytriton wheel's) with our backend directory, and the
perf_analyzer of perf/analyzer.py (tritonclient 2.50's, with its library fix).

Model Analyzer searches what a config.pbtxt holds: instance counts, max_batch_size and
dynamic batching, per model (brute search) or over an ensemble's composing models (quick
search). aerec's own tuner (perf.harness.tune) is kept for what it cannot search: the
pipeline (ensemble vs fused) and ONNX Runtime's threads and spinning, which live in model
parameters Model Analyzer does not vary.

Config keys: Model Analyzer's config.md (profile options: triton_launch_mode,
triton_server_path, triton_server_flags, triton_server_environment, perf_analyzer_path,
perf_analyzer_flags, run_config_search_*, constraints, cpu_only, cpu_only_composing_models).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from perf import analyzer
from server.launcher import WHEEL, assemble_backends, free_ports
from server.launcher import server_environment as launcher_environment

RESULTS_CSV = Path("results") / "metrics-model-inference.csv"


class ModelAnalyzerMissing(RuntimeError):
    """`model-analyzer` is not installed; the message says how to install it."""


@dataclass
class Search:
    """What Model Analyzer searches. `models`: {model name: perf_analyzer --input-data file or
    None (random data is fine for a network alone; the ensemble needs real requests)};
    `ensembles`: those of `models` that are ensembles (quick search over their composing models,
    all CPU-only). Instance counts 1..max_instances, max_batch_size min_batch..max_batch (powers
    of two) with dynamic batching, at the given concurrencies (quick search: between the lowest
    and the highest of them, as it sweeps concurrency itself); `p99_budget_ms`: the latency
    constraint (None: none), as aerec's tuner applies it."""
    models: dict[str, Path | None]
    ensembles: dict[str, list[str]] = field(default_factory=dict)   # name -> composing models
    max_instances: int = 2
    min_batch: int = 16
    max_batch: int = 64
    concurrency: list[int] = field(default_factory=lambda: [1, 16])
    p99_budget_ms: float | None = 2.0
    perf_analyzer_timeout_s: int = 120


def server_environment() -> dict[str, str]:
    """The environment our tritonserver needs (server.launcher.server_environment). Model Analyzer
    runs perf_analyzer in this environment too: perf_analyzer's libraries (perf/analyzer.py) come
    last on LD_LIBRARY_PATH."""
    return launcher_environment(extra_libs=(str(analyzer.install_libs()),))


def config(repo: Path, out: Path, search: Search, build_dir: Path) -> dict:
    """Model Analyzer's profile config (the YAML's content) for `repo`, writing under `out`:
    output_model_repository (its config variants), export_path (results, reports), checkpoints.
    The server runs on free local ports with `build_dir`/backends as its backend directory."""
    http, grpc, metrics = free_ports(3)
    profile = {}
    for name, data in search.models.items():
        entry: dict = {"cpu_only": True}
        if data is not None:
            entry["perf_analyzer_flags"] = {"input-data": str(Path(data).resolve())}
        profile[name] = entry
    cfg = {
        "model_repository": str(repo),
        "output_model_repository_path": str(out / "output_model_repository"),
        "override_output_model_repository": True,
        "export_path": str(out),
        "checkpoint_directory": str(out / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": str(WHEEL / "bin" / "tritonserver"),
        "triton_server_flags": {"backend-directory": str(build_dir / "backends"), "exit-timeout-secs": 10},
        "triton_server_environment": server_environment(),
        "triton_output_path": str(out / "server.log"),
        "triton_http_endpoint": f"127.0.0.1:{http}",
        "triton_grpc_endpoint": f"127.0.0.1:{grpc}",
        "triton_metrics_url": f"http://127.0.0.1:{metrics}/metrics",
        "perf_analyzer_path": str(analyzer.binary()),
        "perf_analyzer_timeout": search.perf_analyzer_timeout_s,
        "perf_output_path": str(out / "perf_analyzer.log"),
        "client_protocol": "grpc",
        # No dcgm_disable: Model Analyzer allows it in remote mode only; with no GPU it finds none
        # and measures the cpu_only models without DCGM.
        "collect_cpu_metrics": False,   # its sampling takes CPU from the measured server
        "profile_models": profile,
        "run_config_search_mode": "quick" if search.ensembles else "brute",
        "run_config_search_min_instance_count": 1,
        "run_config_search_max_instance_count": search.max_instances,
        "run_config_search_min_model_batch_size": search.min_batch,
        "run_config_search_max_model_batch_size": search.max_batch,
        "skip_detailed_reports": True,
    }
    if search.ensembles:
        cfg["cpu_only_composing_models"] = sorted({m for ms in search.ensembles.values() for m in ms})
        # Quick search sweeps concurrency itself and refuses a list: bound it instead.
        cfg["run_config_search_min_concurrency"] = min(search.concurrency)
        cfg["run_config_search_max_concurrency"] = max(search.concurrency)
    else:
        cfg["concurrency"] = search.concurrency
    if search.p99_budget_ms:
        cfg["constraints"] = {"perf_latency_p99": {"max": search.p99_budget_ms}}
    return cfg


def write_config(repo: Path, out: Path, search: Search, build_dir: Path) -> Path:
    """config() as `out`/config.yaml (JSON is YAML); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(json.dumps(config(repo, out, search, build_dir), indent=2))
    return path


def executable() -> Path:
    """The `model-analyzer` script of this environment, or ModelAnalyzerMissing."""
    for candidate in (Path(sys.executable).parent / "model-analyzer", shutil.which("model-analyzer")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ModelAnalyzerMissing("model-analyzer not found: `pip install -e '.[perf]'` installs "
                               "triton-model-analyzer==1.58.0")


def command(config_path: Path) -> list[str]:
    """The documented command line: `model-analyzer profile -f CONFIG`."""
    return [str(executable()), "profile", "-f", str(config_path)]


def profile(repo: Path, out: Path, search: Search, build_dir: Path, timeout_s: float = 900) -> dict:
    """Run Model Analyzer on `repo` (left untouched: it writes its variants elsewhere) and read
    its measurements. Returns {"command", "config", "seconds", "rows" (every measured
    configuration: model, config name, concurrency, throughput req/s, p99 ms), "best" (per
    model: the highest throughput within the latency budget, with its config.pbtxt),
    "returncode", "log_tail"}. Raises ModelAnalyzerMissing. A run past `timeout_s` is stopped
    with SIGINT (Model Analyzer saves its checkpoint: rerunning `command()` resumes it) and
    returns "timed_out": True with whatever results it exported (none before it finishes)."""
    # Model Analyzer runs in `out` (cwd): every path it is given must not be relative to ours.
    repo, out, build_dir = Path(repo).resolve(), Path(out).resolve(), Path(build_dir).resolve()
    assemble_backends(build_dir / "backends")
    path = write_config(repo, out, search, build_dir)
    cmd = command(path)
    t0, timed_out = time.monotonic(), False
    env = analyzer.environment()   # perf_analyzer's libraries for the perf_analyzer MA starts
    with open(out / "model_analyzer.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # SIGINT: Model Analyzer ends after the current measurement and saves its checkpoint,
            # so rerunning command() resumes the search; then SIGKILL if it lingers.
            timed_out = True
            for sig, wait in ((signal.SIGINT, 90), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
            proc.poll()
            _stop_servers(cfg_server_port(path))
    rows = read_rows(out / RESULTS_CSV)
    best = best_configs(rows, search.p99_budget_ms, out / "output_model_repository")
    tail = (out / "model_analyzer.log").read_text(errors="replace")[-3000:]
    return {"command": cmd, "config": json.loads(path.read_text()), "seconds": round(time.monotonic() - t0, 1),
            "rows": rows, "best": best, "returncode": proc.returncode, "timed_out": timed_out, "log_tail": tail}


def cfg_server_port(config_path: Path) -> str:
    """The HTTP port of the tritonserver a config has Model Analyzer start."""
    return json.loads(Path(config_path).read_text())["triton_http_endpoint"].rsplit(":", 1)[1]


def _stop_servers(http_port: str) -> None:
    """Model Analyzer starts tritonserver in a session of its own: if Model Analyzer was killed
    before stopping it, end the server it started (found by the HTTP port of our config)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"tritonserver") and b"--http-port" in args and \
                args[args.index(b"--http-port") + 1:][:1] == [http_port.encode()]:
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def read_rows(path: Path) -> list[dict]:
    """Model Analyzer's metrics-model-inference.csv -> [{model, config, concurrency, throughput,
    p99_ms, ...}] (empty when it wrote none)."""
    if not path.is_file():
        return []
    rows = []
    for r in csv.DictReader(io.StringIO(path.read_text())):
        num = lambda k: float(r[k]) if r.get(k) not in (None, "") else None  # noqa: E731
        rows.append({"model": r.get("Model"), "config": r.get("Model Config Path"),
                     "batch": num("Batch"), "concurrency": num("Concurrency"),
                     "throughput": num("Throughput (infer/sec)"), "p99_ms": num("p99 Latency (ms)"),
                     "max_batch_size": r.get("Max Batch Size"), "instances": r.get("Instance Group"),
                     "satisfies_constraints": r.get("Satisfies Constraints")})
    return rows


def best_configs(rows: list[dict], p99_budget_ms: float | None, variants: Path) -> dict:
    """Per model: Model Analyzer's rule, the highest throughput among measurements within the
    latency budget (the highest of all when none is), with its variants' config.pbtxt texts
    ({variant: text}; an ensemble's config is named "recommend_config_1: preprocess_config_0,
    ..." and brings each composing model's variant)."""
    out = {}
    for model in sorted({r["model"] for r in rows if r["model"]}):
        mine = [r for r in rows if r["model"] == model and r["throughput"] is not None]
        within = [r for r in mine if p99_budget_ms is None or (r["p99_ms"] or 0) <= p99_budget_ms]
        if not mine:
            continue
        best = dict(max(within or mine, key=lambda r: r["throughput"]), within_budget=bool(within))
        head, _, composing = str(best["config"]).partition(":")
        names = [head.strip()] + [n.strip() for n in composing.split(",") if n.strip()]
        best["config_pbtxt"] = {n: (variants / n / "config.pbtxt").read_text() for n in names
                                if (variants / n / "config.pbtxt").is_file()}
        out[model] = best
    return out
