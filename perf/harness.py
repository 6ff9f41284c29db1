"""`aerec perf` / `make perf`: one run that measures the served models with perf_analyzer and
every baseline on the same users, tunes the serving knobs, and writes a report.

Every figure that matters is a ratio of two numbers measured in this run (these machines are
noisy); `summary.json` holds them under stable keys and `perf/results/latest` points here.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.data.synthetic import synthetic_ratings
from builder.export import export_onnx_fp32, ort_session
from builder.repository import Tuning, add_network, apply_tuning, write_repository
from builder.run_folder import load_run, load_run_dataset
from builder.train import make_model
from perf import analyzer, baselines, inputs
from perf.peers import PEERS
from perf.peers import bench as peer_bench
from perf.report import write_report
from perf.results import (DroppedPoint, InProcessReadings, LoadPoint, LoneUserWindow, ModelLevel,
                          PerfResults, RoofWindow, RulesPair, RulesSide, Sweep, TuningResult, TuningTrial)
from perf.soak import soak
from perf.steal import measured, quietest, wait_quiet
from serving.contract import ADMIN_HEADER
from server.launcher import ROOT, TritonServer


@dataclass
class Clock:
    """A run's clock: progress lines on stderr stamped with the seconds since it began."""
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self.started

    def say(self, msg: str) -> None:
        """One progress line on stderr: `[perf   12 s] msg`."""
        print(f"[perf {self.seconds():5.0f} s] {msg}", file=sys.stderr, flush=True)


RESULTS = ROOT / "perf" / "results"
P99_TARGET_MS = 2.0   # the lone user's p99 target (`recommend`, gRPC, concurrency 1), with or without rules
LARGE_ITEMS = 17_770
# The DeepRecommender Netflix layout (n-512-512-1024, mirrored) and one at half the width.
LARGE_MODELS = {"large_w1024": [512, 512, 1024], "large_w512": [256, 256, 512]}


@dataclass
class Plan:
    """What one run measures; `quick` fits `make perf` in a few minutes on 2 cores."""
    model_batches: list[int]
    model_concurrency: str
    ensemble_concurrency: list[int]
    naive_concurrency: list[int]
    interval_ms: int
    naive_seconds: float
    baseline_seconds: float
    tunings: list[dict] = field(default_factory=list)
    soak_seconds: float = 10.0
    batched_concurrency: str = "2:4:2"   # 64 users per request
    # Quick runs measure the large networks only at -b 64 with their tensors in shared memory
    # (the figure the targets name) and leave the int8 network to `aerec export`'s own benchmark;
    # the full run measures everything, over gRPC too.
    large_batches: list[int] = field(default_factory=list)   # quick: shared-memory windows only
    int8_model_level: bool = False
    quiet_wait_s: float = 5.0    # before each tuning trial and extra lone-user window, wait at most this
    point_timeout_s: float = 120.0   # one perf_analyzer call of a sweep; past it the point is dropped
    http_concurrency: list[int] | None = None   # None: the gRPC sweep's levels
    # The serving peers (perf/peers) beside Triton and the hand-written service, under one HTTP/JSON
    # generator at `naive_concurrency` for `naive_seconds` each: their batching grid, points of
    # (max_batch_size in requests, batch_wait_timeout_s); each peer keeps its best point.
    peer_grid: list[tuple[int, float]] = field(default_factory=lambda: [(16, 0.001), (64, 0.005)])
    peers: list[str] = field(default_factory=lambda: list(PEERS))
    model_analyzer: bool = False    # `aerec perf --model-analyzer`: Model Analyzer's search too
    model_analyzer_timeout_s: float = 900.0   # per searched model
    model_analyzer_batches: tuple[int, int] = (64, 64)   # max_batch_size searched: powers of two in this range
    # Model Analyzer's latency constraint: the tuning chooses among the trials whose lone user's
    # p99 is within this budget (the highest score of all when none is); None: score alone.
    p99_budget_ms: float | None = 2.0
    # The lone user with per-request rules in every request (c1_rules_windows): EXCLUDE_IDS and
    # INCLUDE_IDS drawn per request from the catalogue (perf.inputs.rule_columns) with this seed.
    rules_exclude: int = 50     # a basket and recently shown items
    rules_include: int = 200    # an in-stock shelf
    rules_seed: int = 0

    @classmethod
    def quick(cls) -> "Plan":
        """`make perf`: a few minutes on 2 cores; four tuning candidates."""
        return cls([1, 64], "1", [1, 8, 64], [1, 4, 16], 1500, 2.0, 1.0, http_concurrency=[1, 64], tunings=[
            {},
            # One Python model for the three steps, two instances of it, one ORT thread each.
            {"pipeline": "fused", "step_instances": 2, "ort_threads": 1},
            # The same without the batcher's 100 us wait: with two instances busy at concurrency
            # 16 requests queue up anyway, while a lone user waited the full delay every time
            # (`make bench-knobs`, windows with <= 1% steal: c=1 p50 1.09 vs 1.20-1.27 ms, p99
            # 1.68 vs 1.60-1.80 ms, c=16 3,715 vs 3,066-3,681 req/s).
            {"pipeline": "fused", "step_instances": 2, "ort_threads": 1, "step_queue_delay_us": 0},
            # Two instances whose sessions each split a product over both cores (a user costs
            # 5.4 MB of weights, more than one core's 2 MB share of L2), idle pool threads
            # sleeping rather than spinning on cores the gRPC threads need, and no delay.
            {"pipeline": "fused", "step_instances": 2, "ort_threads": 2, "step_queue_delay_us": 0,
             "ort_spinning": False}])

    @classmethod
    def full(cls) -> "Plan":
        """`make perf-full`: every knob on a grid, every batch size and concurrency (hours)."""
        grid = [{"network_instances": ni, "ort_threads": th, "step_instances": si, "network_queue_delay_us": d,
                 "step_queue_delay_us": d}
                for ni, th in ((1, 0), (2, 1)) for si in (1, 2) for d in (0, 100, 1000)]
        # Fused: one model does it all, so its instance count and threads are the knobs.
        grid += [{"pipeline": "fused", "step_instances": si, "ort_threads": th, "step_queue_delay_us": d}
                 for si, th in ((1, 0), (2, 1)) for d in (0, 100, 1000)]
        grid += [{"pipeline": "fused", "step_instances": si, "ort_threads": 2, "step_queue_delay_us": d,
                  "ort_spinning": False} for si in (1, 2) for d in (0, 100)]
        return cls([1, 8, 64, 256], "1:4:1", [1, 2, 4, 8, 16, 32, 64], [1, 2, 4, 8, 16, 32], 3000, 5.0, 2.0,
                   grid, soak_seconds=60.0, batched_concurrency="1:8:1", large_batches=[1, 8, 64, 256],
                   int8_model_level=True, quiet_wait_s=10.0, point_timeout_s=300.0,
                   peer_grid=[(b, w) for b in (4, 16, 64) for w in (0.0005, 0.002, 0.005)],
                   model_analyzer_timeout_s=3600.0, model_analyzer_batches=(16, 64))


def _trained(name: str, run_dir: Path, precisions: list[str]) -> Path:
    """`run_dir` trained from preset `name` (retrained when the preset changed since) and exported."""
    from builder.presets import preset
    from builder.run_folder import save_run
    from builder.train import train
    config = TrainConfig().updated(**preset(name))
    if not (run_dir / "weights.safetensors").is_file() or TrainConfig.load(run_dir / "config.json") != config:
        shutil.rmtree(run_dir / "export", ignore_errors=True)
        dataset = load_dataset(config.data, config.split, config.seed)
        save_run(train(config, dataset, progress=False), dataset, run_dir)
    return _exported(run_dir, precisions)


def _exported(run_dir: Path, precisions: list[str]) -> Path:
    if not all((run_dir / "export" / f"model_{p}.onnx").is_file() for p in precisions):
        from builder.export import ExportConfig, export_run
        export_run(run_dir, ExportConfig(precisions=precisions), bench_seconds=0.2)
    return run_dir


def ensure_runs(run_dir: Path | None, rating_run: Path | None) -> tuple[Path | None, Path | None]:
    """(ranker, rater) run folders to serve, as `aerec repository` takes them. With no run given:
    the `ease-values` ranker beside the `deeprec` rater, each trained once and cached under runs/. A
    given run is served alone unless `rating_run` is given too; a rating run alone is the rater."""
    from builder.models import TOP_N
    if run_dir is None:
        return (_trained("ease-values", ROOT / "runs" / "perf-ease-values", ["fp32"]),
                _trained("deeprec", ROOT / "runs" / "perf-deeprec", ["fp32", "int8"]))
    ranker = TrainConfig.load(Path(run_dir) / "config.json").model in TOP_N
    if rating_run is not None:
        return _exported(Path(run_dir), ["fp32"]), _exported(Path(rating_run), ["fp32", "int8"])
    return (_exported(Path(run_dir), ["fp32"]), None) if ranker else (None, _exported(Path(run_dir), ["fp32", "int8"]))


def large_models(folder: Path) -> dict[str, dict]:
    """Synthetic 17,770-item autoencoders (untrained weights: cost does not depend on values)
    and real-looking inputs for them from the synthetic generator's users."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = synthetic_ratings(2_000, LARGE_ITEMS, 400_000, seed=0)
    users = np.flatnonzero(np.diff(matrix.indptr) > 0)[:32]
    out = {}
    for name, hidden in LARGE_MODELS.items():
        torch.manual_seed(0)
        model = make_model(TrainConfig(model="deeprec", hidden=hidden, last_activation=False), LARGE_ITEMS).eval()
        path = folder / f"{name}.onnx"
        export_onnx_fp32(model, LARGE_ITEMS, path)
        out[name] = {"onnx": path, "hidden": hidden, "x": matrix[users].toarray().astype(np.float32),
                     "torch": model}
    return out


def _statistics(server: TritonServer) -> dict:
    """Per-model server-side time (ns) from Triton's statistics: where a request's time goes."""
    import tritonclient.grpc as grpcclient
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(as_json=True)
    out = {}
    for m in stats.get("model_stats", []):
        s = m.get("inference_stats", {})
        n = int(s.get("success", {}).get("count", 0))
        if not n:
            continue
        ns = lambda k: int(s.get(k, {}).get("ns", 0))  # noqa: E731
        out[m["name"]] = {"requests": n, "executions": int(m.get("execution_count", 0)),
                          "queue_us": ns("queue") / n / 1e3, "input_us": ns("compute_input") / n / 1e3,
                          "infer_us": ns("compute_infer") / n / 1e3, "output_us": ns("compute_output") / n / 1e3}
    return out


def ensemble_rows(server, data, plan, out, clock: Clock, ceiling=None) -> dict[str, Sweep]:
    """One perf_analyzer call per concurrency (powers of two are not an arithmetic range).
    `ceiling()` (ONNX Runtime in-process on the same users) is read right before and right after
    the 64-users-per-request sweep, so their ratio compares two readings of the same minute."""
    res = {}
    for proto in ("grpc", "http"):
        url = server.grpc_url if proto == "grpc" else server.http_url
        rows, commands, dropped = [], [], []
        for c in (plan.ensemble_concurrency if proto == "grpc" else plan.http_concurrency or plan.ensemble_concurrency):
            try:
                r = analyzer.run("recommend", url, proto, data["ratings"], out / f"recommend_{proto}_c{c}.csv",
                                 concurrency=str(c), interval_ms=plan.interval_ms, timeout_s=plan.point_timeout_s)
            except analyzer.PerfAnalyzerTimeout as e:  # one point lost, not the whole run
                clock.say(f"dropped {proto} c={c}: {str(e).split(':')[0]}")
                dropped.append(DroppedPoint(c, str(e)))
                continue
            rows += r.rows
            commands.append(tuple(r.command))
        res[f"recommend_{proto}"] = Sweep(tuple(commands), tuple(rows), tuple(dropped))
    before = measured(ceiling) if ceiling else None
    r = analyzer.run("recommend", server.grpc_url, "grpc", data["user_ids"], out / "recommend_grpc_b64.csv",
                     batch=64, concurrency=plan.batched_concurrency, interval_ms=plan.interval_ms)
    beside = None
    if ceiling:
        after = measured(ceiling)
        beside = InProcessReadings((before[0], after[0]), (before[1], after[1]))
    res["recommend_grpc_b64"] = Sweep((tuple(r.command),), tuple(x.in_users() for x in r.rows), ort_inprocess=beside)
    return res


def tune(server_factory, repo: Path, data: dict, plan: Plan, out: Path, clock: Clock | None = None) -> TuningResult:
    """A small Model-Analyzer-style search: each candidate rewrites the configs, restarts the
    server and measures `recommend` over gRPC three ways: one user per request at concurrency
    16, 64 users per request at concurrency 4, and one user at a time (concurrency 1, whose
    throughput is 1 / mean latency). The score is the geometric mean of the three: no traffic
    shape, and not the lone user's latency, may be sacrificed to the others.

    Returns the trials, the best (best_trial's pick), the default (the first trial: the
    "before") and plan.p99_budget_ms; the repository is left with the best trial's configs. Raises
    analyzer.PerfAnalyzerTimeout when the default trial cannot be measured."""
    clock = clock or Clock()
    trials = []
    for i, change in enumerate(plan.tunings):
        tuning = Tuning(**change)
        apply_tuning(repo, tuning)
        limit = plan.point_timeout_s
        with server_factory() as server:
            quiet = wait_quiet(max_seconds=plan.quiet_wait_s)  # no trial should lose to a neighbour
            try:
                r = analyzer.run("recommend", server.grpc_url, "grpc", data["ratings"], out / f"tune_{i}.csv",
                                 concurrency="16", interval_ms=plan.interval_ms, timeout_s=limit)
                server_time = _statistics(server)  # this trial's own server: where its time went
                rb = analyzer.run("recommend", server.grpc_url, "grpc", data["user_ids"], out / f"tune_{i}_b64.csv",
                                  batch=64, concurrency="4", interval_ms=plan.interval_ms, timeout_s=limit)
                r1 = analyzer.run("recommend", server.grpc_url, "grpc", data["ratings"], out / f"tune_{i}_c1.csv",
                                  concurrency="1", interval_ms=plan.interval_ms, timeout_s=limit)
            except analyzer.PerfAnalyzerTimeout as e:
                clock.say(f"tuning {i + 1}/{len(plan.tunings)} {change or 'default'} dropped: {str(e).split(':')[0]}")
                if i == 0:
                    raise  # the default is the "before" every gain is measured against
                continue
        row, batched, single = r.rows[0], rb.rows[0].throughput, r1.rows[0]
        trials.append(TuningTrial(
            tuning=tuning.to_dict(), throughput=row.throughput, p99_ms=row.p99_ms, batched_users_per_s=batched,
            c1_req_per_s=single.throughput, c1_p50_ms=single.p50_ms, c1_p99_ms=single.p99_ms,
            waited_s=quiet["waited_s"], steal=(r.steal, rb.steal, r1.steal),
            score=(row.throughput * batched * single.throughput) ** (1 / 3), command=tuple(r.command),
            command_batched=tuple(rb.command), command_c1=tuple(r1.command), server_time=server_time))
        clock.say(f"tuning {i + 1}/{len(plan.tunings)} {change or 'default'}: {row.throughput:.0f} req/s, "
             f"{batched:.0f} users/s at 64 per request, {single.throughput:.0f} req/s at c=1 "
             f"(p99 {single.p99_ms:.2f} ms)")
    best = best_trial(trials, plan.p99_budget_ms)
    apply_tuning(repo, Tuning(**best.tuning))
    return TuningResult(tuple(trials), best, trials[0], plan.p99_budget_ms)


def best_trial(trials: list[TuningTrial], p99_budget_ms: float | None) -> TuningTrial:
    """Model Analyzer's rule: the highest score among the trials that meet the latency
    constraint (the lone user's p99 within budget); if none does, the highest score of all."""
    within = [t for t in trials if p99_budget_ms is None or t.c1_p99_ms <= p99_budget_ms]
    return max(within or trials, key=lambda t: t.score)


def paired_roof(server: TritonServer, name: str, data_path: Path, flops: int, plan: Plan, out: Path,
                 reps: int = 3) -> ModelLevel:
    """The large model served at -b 64 (tensors in system shared memory, concurrency 1) between
    two readings of the GEMM roof, `reps` times. Each window's fraction uses the higher of its
    two adjacent roof readings and the figure is the median window: this host's speed swings 3x
    within a minute when neighbours take CPU (steal), so a roof read minutes away from the served
    figure says nothing about it, while the higher adjacent reading still flatters nothing."""
    shm = ("--shared-memory", "system", "-H", f"{ADMIN_HEADER}:{server.admin_key}")
    before = measured(baselines.gemm_peak_gflops, seconds=1.0)
    windows, rows = [], []
    for i in range(reps):
        r = analyzer.run(name, server.http_url, "http", data_path, out / f"model_{name}_b64_shm_{i}.csv", batch=64,
                         concurrency="1", interval_ms=plan.interval_ms, extra=shm)
        after = measured(baselines.gemm_peak_gflops, seconds=1.0)
        tp = max(x.throughput for x in r.rows)
        roof = max(before[0], after[0])
        windows.append(RoofWindow(tp, r.steal, (before[0], after[0]), (before[1], after[1]), tp * flops / 1e9 / roof))
        rows += [x.in_users() for x in r.rows]
        before = after
    command = tuple(c if server.admin_key not in c else "<admin key>" for c in r.command)
    return ModelLevel(name, 64, command, tuple(rows), shared_memory=True, windows=tuple(windows),
                      fraction=statistics.median(w.fraction for w in windows))


def c1_windows(server: TritonServer, data: dict, plan: Plan, out: Path, first: LoadPoint | None, extra: int = 2,
                quiet: float = 0.01) -> list[LoneUserWindow]:
    """The lone user's latency (`recommend`, gRPC, concurrency 1), measured again (up to `extra`
    more windows) until a window sees less than `quiet` of its CPU time stolen: a few ms taken by
    the host a few times a second land in any p99 of ~1 ms requests, so a p99 read under steal
    measures the host's scheduler. The summary takes the window with the least steal (chosen by
    steal, never by its latency) and lists all."""
    def window(x: LoadPoint, waited: float) -> LoneUserWindow:
        return LoneUserWindow(x.throughput, x.p50_ms, x.p99_ms, x.steal, waited)
    windows = [window(first, 0.0)] if first else []
    for i in range(extra):
        if windows and (windows[-1].steal or 0.0) < quiet:
            break
        waited = wait_quiet(max_seconds=plan.quiet_wait_s)["waited_s"]  # a quiet host, if one comes soon
        try:
            r = analyzer.run("recommend", server.grpc_url, "grpc", data["ratings"],
                             out / f"recommend_grpc_c1_w{i + 1}.csv", concurrency="1", interval_ms=plan.interval_ms,
                             timeout_s=plan.point_timeout_s)
        except analyzer.PerfAnalyzerTimeout:
            continue
        windows.append(window(r.rows[0], waited))
    return windows


def c1_rules_windows(server: TritonServer, data: dict, plan: Plan, out: Path, extra: int = 2,
                     quiet: float = 0.01) -> list[RulesPair]:
    """The lone user (`recommend`, gRPC, concurrency 1) without and with per-request rules, in
    pairs of windows a few seconds apart: `data["ratings"]` and `data["ratings_rules"]` (the same
    users' requests with EXCLUDE_IDS and INCLUDE_IDS added, perf.inputs.ensemble_rules_data).
    Each pair first waits up to plan.quiet_wait_s for a quiet host and alternates which side
    goes first, so a drift in the host's speed does not favour one side; as c1_windows, pairs
    are measured again (up to `extra` more) until both windows of one lose less than `quiet`
    of their CPU time to steal. A pair lost to perf_analyzer's time limit is skipped.

    Returns one RulesPair per pair; its `load_1min` (the host's 1-minute load average after the
    pair) counts other processes on our cores, which steal does not."""
    pairs: list[RulesPair] = []
    for i in range(1 + extra):
        if pairs and (pairs[-1].steal or 0.0) < quiet:
            break
        waited = wait_quiet(max_seconds=plan.quiet_wait_s)["waited_s"]
        sides = ("plain", "rules") if i % 2 == 0 else ("rules", "plain")
        figures, commands = {}, {}
        try:
            for side in sides:
                r = analyzer.run("recommend", server.grpc_url, "grpc",
                                 data["ratings_rules" if side == "rules" else "ratings"],
                                 out / f"recommend_grpc_c1_{side}_p{i}.csv", concurrency="1",
                                 interval_ms=plan.interval_ms, timeout_s=plan.point_timeout_s)
                x = r.rows[0]
                figures[side] = RulesSide(x.throughput, x.p50_ms, x.p99_ms, x.steal)
                commands[side] = tuple(r.command)
        except analyzer.PerfAnalyzerTimeout:
            continue
        plain, ruled = figures["plain"], figures["rules"]
        steals = [f.steal for f in figures.values() if f.steal is not None]
        pairs.append(RulesPair(plain, ruled, commands["plain"], commands["rules"],
                               p50_ratio=ruled.p50_ms / plain.p50_ms, p99_ratio=ruled.p99_ms / plain.p99_ms,
                               steal=max(steals) if steals else None, waited_s=waited, first=sides[0],
                               load_1min=os.getloadavg()[0]))
    return pairs


@dataclass
class Setup:
    """What every stage of one run works on, made once by `prepare`: the plan, the output folder
    and clock, the served runs and their networks, the held-out users (`x`: their training
    ratings, float32 [users, items]), the perf_analyzer input files (`data`), the synthetic large
    networks and the model repository the server loads."""
    plan: Plan
    out: Path
    clock: Clock
    ranker_run: Path | None
    rater_run: Path | None
    runs: list[Path]
    models: list[torch.nn.Module]
    dataset: object
    users: np.ndarray
    x: np.ndarray
    data: dict[str, Path]
    large: dict[str, dict]
    repo: Path
    served: list[str]

    @property
    def onnx_fp32(self) -> list[Path]:
        """The served networks' fp32 ONNX files, in serving order (ranker, rater)."""
        return [r / "export" / "model_fp32.onnx" for r in self.runs]

    def server(self) -> TritonServer:
        """A server (not started) on this run's repository, logging to OUT/server.log."""
        return TritonServer(self.repo, build_dir=ROOT / "build" / "triton", log=self.out / "server.log")


def prepare(run_dir: Path | None, rating_run: Path | None, plan: Plan, out: Path, clock: Clock,
            n_users: int = 64) -> Setup:
    """Stage 1: the runs (trained and exported if needed, see ensure_runs), `n_users` held-out
    test users as perf_analyzer input files, the synthetic 17,770-item networks, and the model
    repository `aerec repository` would write, with the large networks added."""
    ranker_run, rater_run = ensure_runs(Path(run_dir) if run_dir else None, Path(rating_run) if rating_run else None)
    runs = [r for r in (ranker_run, rater_run) if r is not None]
    # The served pipeline runs every network on every user: its baselines run them all too.
    models = [load_run(r)[1] for r in runs]
    dataset = load_run_dataset(runs[0])
    users = inputs.held_out_users(dataset.test, dataset.train, n_users)
    x = dataset.train[users].toarray().astype(np.float32)
    data = {"ratings": inputs.write(inputs.ensemble_ratings_data(dataset.train, dataset.item_ids, users),
                                    out / "data" / "recommend_ratings.json"),
            "user_ids": inputs.write(inputs.ensemble_user_data(dataset.user_ids, users),
                                     out / "data" / "recommend_user_ids.json"),
            "model": inputs.write(inputs.model_data(dataset.train, users), out / "data" / "model_ml100k.json")}
    n_items = len(dataset.item_ids)   # a catalogue smaller than a rule list gives every item
    data["ratings_rules"] = inputs.write(inputs.ensemble_rules_data(
        dataset.train, dataset.item_ids, users, n_exclude=min(plan.rules_exclude, n_items),
        n_include=min(plan.rules_include, n_items), seed=plan.rules_seed),
        out / "data" / "recommend_ratings_rules.json")
    clock.say("building the synthetic 17,770-item models")
    large = large_models(out / "models")
    for name, m in large.items():
        data[name] = inputs.write({"data": [{"RATINGS": {"content": [float(v) for v in r], "shape": [len(r)]}}
                                            for r in m["x"]]}, out / "data" / f"model_{name}.json")
    repo = out / "model_repository"
    variants = ["onnx", "onnx_int8"] if rater_run else ["onnx"]
    manifest = write_repository(runs[0], repo, variants, rating_run=rater_run if ranker_run else None)
    served = [n for n in (manifest["ranker"], manifest["rater"]) if n]
    for name, m in large.items():
        add_network(repo, name, m["onnx"], LARGE_ITEMS)
    return Setup(plan, out, clock, ranker_run, rater_run, runs, models, dataset, users, x, data, large, repo, served)


def measure_baselines(s: Setup) -> tuple[dict, dict]:
    """Stage 2, with no server competing for the cores: the GEMM roof (GFLOP/s), and per
    network set the FLOPs per user and users/s in-process (PyTorch one user per forward and 64
    per forward, ONNX Runtime 64 per run; the rater's int8 too). Returns (baselines, the steal
    share of each ceiling's first reading: reread_ceilings pairs it with the second)."""
    plan, x = s.plan, s.x
    roof, first_steal = measured(baselines.gemm_peak_gflops, seconds=plan.baseline_seconds)
    first_steal = {"gemm_peak_gflops": first_steal}
    torch.set_num_threads(os.cpu_count() or 1)
    ort_small, first_steal["ml100k"] = measured(baselines.ort_ceiling, s.onnx_fp32, x, 64, plan.baseline_seconds)
    base = {"gemm_peak_gflops": roof, "ml100k": {
        "networks": s.served,
        "flops_per_user": baselines.flops_per_user(s.onnx_fp32),
        "torch_one_per_forward": baselines.torch_one_per_forward(s.models, x, plan.baseline_seconds),
        "torch_batched_b64": baselines.torch_batched(s.models, x, 64, plan.baseline_seconds),
        "ort_batched_b64": ort_small}}
    for name, path in zip(s.served, s.onnx_fp32):  # each network alone: the model-level rows' reference
        base[name] = {"flops_per_user": baselines.flops_per_user(path),
                      "ort_batched_b64": baselines.ort_ceiling(path, x, 64, plan.baseline_seconds)}
    if s.rater_run:
        # The rater's int8 variant is served as `rater_onnx_int8`; in-process with the ranker in fp32.
        int8 = [*s.onnx_fp32[:-1], s.rater_run / "export" / "model_int8.onnx"]
        base["ml100k"]["ort_int8_batched_b64"] = baselines.ort_batched([ort_session(p) for p in int8], x,
                                                                       64, plan.baseline_seconds)
    for name, m in s.large.items():
        ort_large, first_steal[name] = measured(baselines.ort_ceiling, m["onnx"], m["x"], 64,
                                                plan.baseline_seconds)
        base[name] = {"flops_per_user": baselines.flops_per_user(m["onnx"]), "hidden": m["hidden"],
                      "torch_batched_b64": baselines.torch_batched(m["torch"], m["x"], 64, plan.baseline_seconds),
                      "ort_batched_b64": ort_large}
    return base, first_steal


def tune_and_save(s: Setup) -> TuningResult:
    """Stage 3: the tuning (see tune), its choice written to OUT/tuned.json for
    `aerec repository --tuned`; the repository keeps the chosen configs for the sweeps."""
    tuning = tune(s.server, s.repo, s.data, s.plan, s.out, s.clock)
    best = tuning.best
    (s.out / "tuned.json").write_text(json.dumps(
        {"tuning": best.tuning, "measured": {"throughput": best.throughput, "p99_ms": best.p99_ms,
                                             "batched_users_per_s": best.batched_users_per_s}}, indent=2))
    return tuning


def sweep(s: Setup, base: dict) -> dict:
    """Stage 4, on one server with the tuned configs: each network alone at the plan's batch
    sizes (the large ones also through shared memory, beside the roof), the `recommend`
    pipeline over gRPC and HTTP, the lone user's quiet windows (and beside them, in pairs, the
    lone user with per-request rules: c1_rules_windows), Triton's HTTP/JSON endpoint beside
    the serving peers and the hand-written service under one generator (compare_http), and a
    soak with invalid requests mixed in. Returns those results."""
    plan, data, out, large = s.plan, s.data, s.out, s.large
    results = {}
    with s.server() as server:
        model_level = {}
        nets = {**{name: data["model"] for name in s.served},
                **({"rater_onnx_int8": data["model"]} if plan.int8_model_level and s.rater_run else {}),
                **{name: data[name] for name in large}}
        for name, d in nets.items():
            for b in plan.large_batches if name in large else plan.model_batches:
                r = analyzer.run(name, server.grpc_url, "grpc", d, out / f"model_{name}_b{b}.csv", batch=b,
                                 concurrency=plan.model_concurrency, interval_ms=plan.interval_ms)
                model_level[f"{name}_b{b}"] = ModelLevel(name, b, tuple(r.command),
                                                         tuple(x.in_users() for x in r.rows))
            if name in large:
                # A co-located client can hand Triton its tensors in system shared memory instead
                # of 4.5 MB gRPC messages each way; registering a region is an admin API (the key).
                model_level[f"{name}_b64_shm"] = paired_roof(server, name, data[name], base[name]["flops_per_user"],
                                                             plan, out, reps=3 if name == "large_w1024" else 1)
            s.clock.say(f"model level {name} done")
        results["model_level"] = model_level
        results["server_time_model_level"] = _statistics(server)
        results["ensemble"] = ensemble_rows(server, data, plan, out, s.clock, ceiling=lambda: baselines.ort_ceiling(
            s.onnx_fp32, s.x, 64, plan.baseline_seconds))
        first = next((x for x in results["ensemble"]["recommend_grpc"].rows if x.concurrency == 1), None)
        results["c1_windows"] = tuple(c1_windows(server, data, plan, out, first))
        s.clock.say(f"the lone user with rules ({plan.rules_exclude} EXCLUDE_IDS, {plan.rules_include} "
                    "INCLUDE_IDS per request) beside the lone user without, in pairs of windows")
        results["c1_rules_windows"] = tuple(c1_rules_windows(server, data, plan, out))
        requests = [(r["ITEM_IDS"]["content"], r["RATINGS"]["content"])
                    for r in json.loads(data["ratings"].read_text())["data"]]
        s.clock.say("ensemble sweeps done; Triton, the serving peers and the naive service under one generator")
        results["http"] = compare_http(s, server, requests)
        rows = {name: results["http"]["servers"][name].get("shapes", {}).get("1", []) for name in ("naive", "triton")}
        results["naive"] = {"naive": rows["naive"], "triton_http_json": rows["triton"]}   # one user per request
        s.clock.say(f"soak: {plan.soak_seconds:.0f} s at concurrency 64, one request in five invalid")
        results["soak"] = soak(server, s.dataset, plan.soak_seconds, concurrency=64).to_dict()
        results["server_config"] = {p.parent.name: p.read_text() for p in sorted(s.repo.glob("*/config.pbtxt"))}
    return results


def compare_http(s: Setup, server: TritonServer, requests: list) -> dict:
    """Stage 4b: Triton's HTTP/JSON endpoint, the serving peers (perf/peers: Ray Serve, LitServe,
    FastAPI + micro-batcher, each at its best point of plan.peer_grid) and the hand-written
    service under one generator, one user and 64 users per request (perf.peers.bench.compare).
    The peers run ONNX Runtime with the served configs' thread count."""
    tuning = json.loads((s.repo / "aerec_repository.json").read_text()).get("tuning", {})
    return peer_bench.compare(server, s.runs, s.repo, int(tuning.get("ort_threads", 0)), requests,
                              s.plan.naive_concurrency, s.plan.naive_seconds, s.plan.peer_grid, s.out,
                              peers=s.plan.peers, say=s.clock.say)


def model_analyzer_stage(s: Setup, tuning: TuningResult) -> dict:
    """Stage 3b (`aerec perf --model-analyzer`): Triton Model Analyzer's search (perf/model_analyzer.py)
    over the served ranker network (brute: instance counts 1-2, max_batch_size 16-64 with dynamic
    batching) and the `recommend` ensemble (quick search over its composing models), on a copy of
    the repository as it was before the tuning's choice, in the same run as aerec's tuner. Its
    best configurations go beside the tuner's choice in the report."""
    from builder.repository import Tuning
    from perf import model_analyzer as ma
    repo = s.out / "ma_repository"
    shutil.copytree(s.repo, repo, dirs_exist_ok=True)
    apply_tuning(repo, Tuning())   # the default configs: Model Analyzer searches from them
    for name in s.large:  # the synthetic networks are the sweep's, not the served pipeline's
        shutil.rmtree(repo / name, ignore_errors=True)
    network = s.served[0]
    models = {network: s.data["model"], "recommend": s.data["ratings"]}
    composing = [n for n in ("preprocess", *s.served, "postprocess")]
    out = {}
    for name, data in models.items():
        search = ma.Search({name: data}, {name: composing} if name == "recommend" else {},
                           min_batch=s.plan.model_analyzer_batches[0], max_batch=s.plan.model_analyzer_batches[1],
                           p99_budget_ms=s.plan.p99_budget_ms)
        s.clock.say(f"Model Analyzer on {name} (at most {s.plan.model_analyzer_timeout_s:.0f} s)")
        try:
            out[name] = ma.profile(repo, s.out / "model_analyzer" / name, search, ROOT / "build" / "triton",
                                   timeout_s=s.plan.model_analyzer_timeout_s)
        except ma.ModelAnalyzerMissing as e:
            return {"error": str(e)}
        best = out[name]["best"].get(name)
        s.clock.say(f"Model Analyzer {name}: {len(out[name]['rows'])} measurements, best "
                    + (f"{best['config']} {best['throughput']:,.0f} infer/s p99 {best['p99_ms']:.2f} ms"
                       if best else "none"))
    best = tuning.best
    out["aerec_tuner"] = {"tuning": best.tuning, "throughput": best.throughput, "p99_ms": best.p99_ms,
                          "c1_p99_ms": best.c1_p99_ms}
    return out


def reread_ceilings(s: Setup, base: dict, first_steal: dict) -> None:
    """Stage 5, the server gone: the roof and the in-process ceilings read again. On a noisy
    machine one reading can be low, which would flatter every ratio; `base` keeps both readings
    (and their steal) and uses the higher of each."""
    plan = s.plan
    again = {"gemm_peak_gflops": measured(baselines.gemm_peak_gflops, seconds=plan.baseline_seconds),
             "ml100k": measured(baselines.ort_ceiling, s.onnx_fp32, s.x, 64, plan.baseline_seconds),
             **{name: measured(baselines.ort_ceiling, m["onnx"], m["x"], 64,
                               plan.baseline_seconds) for name, m in s.large.items()}}
    base["readings_steal"] = {k: [first_steal[k], v[1]] for k, v in again.items()}
    again = {k: v[0] for k, v in again.items()}
    base["readings"] = {"gemm_peak_gflops": [base["gemm_peak_gflops"], again["gemm_peak_gflops"]],
                        **{name: [base[name]["ort_batched_b64"], again[name]] for name in ("ml100k", *s.large)}}
    base["gemm_peak_gflops"] = max(base["readings"]["gemm_peak_gflops"])
    for name in ("ml100k", *s.large):
        base[name]["ort_batched_b64"] = max(base["readings"][name])


def write_results(out: Path, results: PerfResults, results_root: Path) -> dict:
    """Stage 6: results.json (everything), summary.json (see summarise) and report.md in `out`,
    and `results_root`/latest pointing at it. Returns the summary."""
    summary = summarise(results)
    (out / "results.json").write_text(json.dumps(results.to_dict(), indent=2, default=str))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, results, summary)
    latest = results_root / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out.name)
    return summary


def run_perf(run_dir: Path | None = None, full: bool = False, results_root: Path = RESULTS,
             n_users: int = 64, p99_budget_ms: float | None = 2.0, rating_run: Path | None = None,
             model_analyzer: bool = False, peers: list[str] | None = None) -> Path:
    """`aerec perf`: build the repository `aerec repository RUN_DIR [--rating-model RATING_RUN]`
    would (by default the `ease-values` ranker beside the `deeprec` rater), measure it and every
    baseline on `n_users` held-out users, tune it, and write report.md, summary.json,
    results.json and tuned.json under `results_root`/<stamp>/; returns that folder.

    `full`: Plan.full() (hours) instead of Plan.quick() (minutes). `p99_budget_ms`: the tuning's
    latency constraint on the lone user's p99 (None: score alone). `model_analyzer`: Triton Model
    Analyzer's search too (model_analyzer_stage). `peers`: the serving peers to compare (default
    all of perf.peers.PEERS; [] none). Throughputs are requests or
    users per second, latencies ms, the roof GFLOP/s. Method: perf_analyzer (NVIDIA's client
    tool) as Triton's performance guide uses it; the tuning follows Model Analyzer's search with
    a latency constraint. Raises PerfAnalyzerMissing when perf_analyzer cannot run (checked
    before anything else), analyzer.PerfAnalyzerTimeout when the default configuration cannot
    be measured."""
    plan = Plan.full() if full else Plan.quick()
    plan.p99_budget_ms = p99_budget_ms
    plan.model_analyzer = model_analyzer
    results_root = Path(results_root).resolve()   # tools started in other folders (Model Analyzer) read its paths
    if peers is not None:
        plan.peers = list(peers)
    analyzer.check()  # fail first, and clearly, if perf_analyzer cannot run
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = results_root / stamp
    out.mkdir(parents=True)
    clock = Clock()
    clock.say(f"results in {out}")
    s = prepare(run_dir, rating_run, plan, out, clock, n_users)
    results = {"run": str(s.runs[0]), "runs": {"ranker": str(s.ranker_run) if s.ranker_run else None,
                                               "rater": str(s.rater_run) if s.rater_run else None},
               "networks": s.served, "stamp": stamp, "mode": "full" if full else "quick", "users": int(len(s.users)),
               "dataset": s.dataset.summary(), "plan": asdict(plan)}
    # In-process baselines and the roof first, with no server competing for the cores.
    clock.say("in-process baselines and the GEMM roof")
    base, first_steal = measure_baselines(s)
    results["baselines"] = base
    # Tuning before the sweeps, so they describe the configuration the report recommends; the
    # default configuration's figure is the tuning's first trial (the "before").
    results["tuning"] = tune_and_save(s)
    if plan.model_analyzer:
        results["model_analyzer"] = model_analyzer_stage(s, results["tuning"])
    results.update(sweep(s, base))
    # Step by step as the default three-model pipeline spends it (the tuning's first trial).
    results["server_time"] = results["tuning"].default.server_time
    clock.say("ceilings again (GEMM roof, ORT in-process); the higher reading of each is used")
    reread_ceilings(s, base, first_steal)
    results["seconds"] = round(clock.seconds(), 1)
    write_results(out, PerfResults(**results), results_root)
    return out


def rules_summary(pairs: list[RulesPair], target_ms: float) -> dict | None:
    """The lone user with and without rules (c1_rules_windows' pairs): the pair with the least
    steal (chosen by steal, never by latency), its p50/p99 (ms) both ways, their ratios (rules
    over plain), its steal, whether the p99 with rules is within `target_ms`, the median ratios
    over all pairs (steered by no choice at all), and every pair.
    None when no pair was measured (results from before the rules)."""
    if not pairs:
        return None
    best = quietest(pairs)
    return {"plain": {"p50_ms": best.plain.p50_ms, "p99_ms": best.plain.p99_ms},
            "rules": {"p50_ms": best.rules.p50_ms, "p99_ms": best.rules.p99_ms},
            "p50_ratio": best.p50_ratio, "p99_ratio": best.p99_ratio, "steal": best.steal,
            "target_ms": target_ms, "within_target": best.rules.p99_ms <= target_ms,
            "p50_ratio_median": statistics.median(w.p50_ratio for w in pairs),
            "p99_ratio_median": statistics.median(w.p99_ratio for w in pairs),
            "windows": [{"plain_p99_ms": w.plain.p99_ms, "rules_p99_ms": w.rules.p99_ms,
                         "plain_p50_ms": w.plain.p50_ms, "rules_p50_ms": w.rules.p50_ms,
                         "p99_ratio": w.p99_ratio, "steal": w.steal, "load_1min": w.load_1min}
                        for w in pairs]}


def summarise(r: PerfResults) -> dict:
    """The figures the issue names, each a ratio of two numbers from this run (summary.json)."""
    base = r.baselines
    ens = r.ensemble
    grpc, batched = ens["recommend_grpc"].rows, ens["recommend_grpc_b64"]
    best_single = max(x.throughput for x in grpc)
    best_batched = max(x.throughput for x in batched.rows)
    best_served = max(best_single, best_batched)
    # The lone user's window with the least stolen CPU (chosen by steal, not by latency).
    c1_windows = r.c1_windows or [x for x in grpc if x.concurrency == 1]
    c1 = quietest(c1_windows) if c1_windows else None
    rules = rules_summary(r.c1_rules_windows or [], P99_TARGET_MS)
    naive_best = max(x["throughput"] for x in r.naive["naive"])
    triton_same_load = max(x["throughput"] for x in r.naive["triton_http_json"])
    # Like for like: the same shape, generator and users on both sides (perf.peers.bench.ratios).
    http = peer_bench.ratios(r.http) if r.http else {}
    # The large model served with its tensors in shared memory, each window against the roof
    # read right before and after it; the median window (see paired_roof).
    paired = r.model_level.get("large_w1024_b64_shm")
    windows = (paired.windows if paired else None) or ()
    large_fraction = paired.fraction if paired else None
    large_tp = statistics.median(w.users_per_s for w in windows) if windows else None
    roof = base["gemm_peak_gflops"]
    best_row = max((*grpc, *batched.rows), key=lambda x: x.throughput)
    tuning = r.tuning
    # 64 users per request (the best served shape) against the in-process readings taken right
    # before and after it (the higher one); runs without them compare with the run's ceiling.
    beside = batched.ort_inprocess.users_per_s if batched.ort_inprocess else ()
    ceiling = max([*beside, 0.0]) or base["ml100k"]["ort_batched_b64"]
    return {
        "ensemble_vs_inprocess_ort": best_batched / ceiling,
        "ensemble_single_user_vs_inprocess_ort": best_single / base["ml100k"]["ort_batched_b64"],
        "p99_ms_concurrency1": c1.p99_ms if c1 else None,
        "p99_ms_concurrency1_windows": [{"p99_ms": w.p99_ms, "steal": w.steal} for w in c1_windows],
        # The lone user with 50 EXCLUDE_IDS and 200 INCLUDE_IDS in every request (rules_summary).
        "p99_ms_concurrency1_rules": rules["rules"]["p99_ms"] if rules else None,
        "p99_c1_rules_vs_plain": rules["p99_ratio"] if rules else None,
        "lone_user_rules": rules,
        # Triton HTTP/JSON over the hand-written service, each shape (1 and 64 users per request) at
        # each server's best concurrency, the lower of the two; results from before the peers:
        # the best served gRPC figure over the naive service's one user per request.
        "served_vs_naive": http.get("served_vs_naive") or best_served / naive_best,
        "served_vs_naive_same_generator": triton_same_load / naive_best,   # one user per request
        "served_vs_best_peer": http.get("served_vs_best_peer"),
        "p99_c1_vs_best_peer": http.get("p99_c1_vs_best_peer"),
        "peers": {k: http[k] for k in ("served_vs_best_peer_by_shape", "p99_c1_ms", "served_vs_naive_by_shape")}
        if http else None,
        "large_model_roof_fraction": large_fraction,
        "large_model_ort_inprocess_roof_fraction":
            base["large_w1024"]["ort_batched_b64"] * base["large_w1024"]["flops_per_user"] / 1e9 / roof,
        "tuning_gain": tuning.best.score / tuning.default.score,
        # The hypervisor's share of CPU time while each target figure was measured (perf/steal.py).
        "steal": {"ensemble_served": best_row.steal,
                  "ort_inprocess": (list(batched.ort_inprocess.steal) if batched.ort_inprocess else None)
                  or base.get("readings_steal", {}).get("ml100k"),
                  "p99_ms_concurrency1": c1.steal if c1 else None,
                  "large_model_windows": [w.steal for w in windows],
                  "roof_readings": [s for w in windows for s in w.roof_steal]},
        "soak": {k: r.soak[k] for k in ("seconds", "concurrency", "requests", "valid_failed", "unexpected",
                                        "throughput", "p99_ms", "rss_start_mb", "rss_end_mb", "rss_growth")}
        if r.soak is not None else None,
        "figures": {"ort_inprocess_b64_users_per_s": base["ml100k"]["ort_batched_b64"],
                    "ensemble_grpc_best_req_per_s": best_single, "ensemble_grpc_b64_users_per_s": best_batched,
                    "naive_best_req_per_s": naive_best, "triton_http_json_same_generator_req_per_s": triton_same_load,
                    "gemm_peak_gflops": roof, "large_w1024_b64_users_per_s": large_tp},
        # served_vs_naive has no target: its old one (10) applied to an unlike-for-like ratio (64 users per
        # request against one); like for like, the batching peers are the comparison that matters.
        "targets": {"ensemble_vs_inprocess_ort": 0.5, "p99_ms_concurrency1": P99_TARGET_MS,
                    "p99_ms_concurrency1_rules": P99_TARGET_MS,
                    "large_model_roof_fraction": 0.5, "served_vs_best_peer": 1.5, "p99_c1_vs_best_peer": 1.0},
    }
