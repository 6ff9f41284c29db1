"""Typed results of one `aerec perf` run: perf_analyzer's load points, the sweeps made of them,
the model-level entries, the tuning's trials and the whole run, each written to and read from
results.json's layout (`to_dict` / `from_dict`) key for key, in the order the harness writes.

Units throughout: latencies in ms; `throughput` in requests/s (perf_analyzer's Inferences/Second:
users/s when one request carries `batch` users); `users_per_s` in users/s; `steal` a share of
CPU time in [0, 1] (perf/steal.py), None when unknown. Sections no code reads field by field
(baselines, the peers' comparison, Model Analyzer, the soak, the plan) stay plain dicts.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


def _commands(v) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(c) for c in v)


@dataclass(frozen=True)
class LoadPoint:
    """One row of perf_analyzer's CSV: one concurrency's window. `stable` is False when the
    window only settled with the stability band opened wide (perf.analyzer.run); `stable` and
    `steal` are None for a CSV parsed without a run (and then not written). `users_per_s` is
    the throughput counted in users where a request carries several (written only when set)."""
    concurrency: int
    throughput: float                    # requests/s (users/s at -b > 1)
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    avg_ms: float | None = None
    server_queue_ms: float | None = None
    server_compute_ms: float | None = None
    stable: bool | None = None
    steal: float | None = None
    users_per_s: float | None = None     # users/s

    def measured(self, stable: bool, steal: float | None) -> LoadPoint:
        """This point as measured in a window: whether it was stable and the steal during it."""
        return replace(self, stable=stable, steal=steal)

    def in_users(self) -> LoadPoint:
        """This point with `users_per_s` set (perf_analyzer's throughput already counts users)."""
        return replace(self, users_per_s=self.throughput)

    def to_dict(self) -> dict:
        """results.json's row: {concurrency, throughput, p50_ms, ..., [stable, steal], [users_per_s]}."""
        d = {f.name: getattr(self, f.name) for f in fields(self)[:9]}
        if self.stable is not None or self.steal is not None:
            d.update(stable=self.stable, steal=self.steal)
        if self.users_per_s is not None:
            d["users_per_s"] = self.users_per_s
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LoadPoint:
        """A row of results.json (or of parse_csv). Raises TypeError on a key it does not know."""
        return cls(**d)


@dataclass(frozen=True)
class DroppedPoint:
    """A concurrency perf_analyzer could not measure within its time limit, and why."""
    concurrency: int
    error: str

    def to_dict(self) -> dict:
        return {"concurrency": self.concurrency, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> DroppedPoint:
        return cls(d["concurrency"], d["error"])


@dataclass(frozen=True)
class InProcessReadings:
    """ONNX Runtime in-process on the same users, read right before and right after a sweep:
    users/s and the steal of each reading."""
    users_per_s: tuple[float, ...]
    steal: tuple[float | None, ...]

    def to_dict(self) -> dict:
        return {"users_per_s": list(self.users_per_s), "steal": list(self.steal)}

    @classmethod
    def from_dict(cls, d: dict) -> InProcessReadings:
        return cls(tuple(d["users_per_s"]), tuple(d["steal"]))


@dataclass(frozen=True)
class Sweep:
    """One served pipeline's sweep (`recommend` over one protocol and request shape): every
    perf_analyzer command line, its points, the points dropped (gRPC/HTTP sweeps; None: not
    recorded) and the in-process readings beside it (64 users per request; None: not read)."""
    commands: tuple[tuple[str, ...], ...]
    rows: tuple[LoadPoint, ...]
    dropped: tuple[DroppedPoint, ...] | None = None
    ort_inprocess: InProcessReadings | None = None

    def to_dict(self) -> dict:
        d = {"commands": [list(c) for c in self.commands], "rows": [x.to_dict() for x in self.rows]}
        if self.dropped is not None:
            d["dropped"] = [x.to_dict() for x in self.dropped]
        if self.ort_inprocess is not None:
            d["ort_inprocess"] = self.ort_inprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Sweep:
        return cls(_commands(d["commands"]), tuple(LoadPoint.from_dict(x) for x in d["rows"]),
                   tuple(DroppedPoint.from_dict(x) for x in d["dropped"]) if "dropped" in d else None,
                   InProcessReadings.from_dict(d["ort_inprocess"]) if "ort_inprocess" in d else None)


@dataclass(frozen=True)
class RoofWindow:
    """A served window between two readings of the GEMM roof: users/s, its steal, the roof
    before and after (GFLOP/s) with their steal, and users/s x FLOPs per user over the higher."""
    users_per_s: float
    steal: float | None
    roof_gflops: tuple[float, float]
    roof_steal: tuple[float | None, float | None]
    fraction: float

    def to_dict(self) -> dict:
        return {"users_per_s": self.users_per_s, "steal": self.steal, "roof_gflops": list(self.roof_gflops),
                "roof_steal": list(self.roof_steal), "fraction": self.fraction}

    @classmethod
    def from_dict(cls, d: dict) -> RoofWindow:
        return cls(d["users_per_s"], d["steal"], tuple(d["roof_gflops"]), tuple(d["roof_steal"]), d["fraction"])


@dataclass(frozen=True)
class ModelLevel:
    """One served network alone at one batch size (`-b`, users per request): the command and its
    points. Through shared memory (harness.paired_roof) also its roof windows and the median
    window's fraction of the roof."""
    model: str
    batch: int
    command: tuple[str, ...]
    rows: tuple[LoadPoint, ...]
    shared_memory: bool = False
    windows: tuple[RoofWindow, ...] | None = None
    fraction: float | None = None

    @property
    def best_throughput(self) -> float:
        """The highest throughput of its points (users/s)."""
        return max(x.throughput for x in self.rows)

    def to_dict(self) -> dict:
        d = {"model": self.model, "batch": self.batch}
        if self.shared_memory:
            d["shared_memory"] = True
        d.update(command=list(self.command), rows=[x.to_dict() for x in self.rows])
        if self.windows is not None:
            d["windows"] = [w.to_dict() for w in self.windows]
        if self.fraction is not None:
            d["fraction"] = self.fraction
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelLevel:
        return cls(d["model"], d["batch"], tuple(d["command"]), tuple(LoadPoint.from_dict(x) for x in d["rows"]),
                   bool(d.get("shared_memory", False)),
                   tuple(RoofWindow.from_dict(w) for w in d["windows"]) if "windows" in d else None,
                   d.get("fraction"))


@dataclass(frozen=True)
class LoneUserWindow:
    """One window of the lone user (`recommend`, gRPC, concurrency 1): req/s, p50/p99 ms, its
    steal and the seconds waited for a quiet host before it (None, and not written: a run
    before the wait)."""
    throughput: float
    p50_ms: float | None
    p99_ms: float | None
    steal: float | None
    waited_s: float | None = None

    def to_dict(self) -> dict:
        d = {"throughput": self.throughput, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "steal": self.steal}
        if self.waited_s is not None:
            d["waited_s"] = self.waited_s
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LoneUserWindow:
        return cls(**d)


@dataclass(frozen=True)
class RulesSide:
    """One side of a rules pair (the lone user without or with per-request rules): req/s, p50/p99
    ms and the steal of its window."""
    throughput: float
    p50_ms: float | None
    p99_ms: float | None
    steal: float | None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> RulesSide:
        return cls(**d)


@dataclass(frozen=True)
class RulesPair:
    """The lone user without (`plain`) and with (`rules`) per-request rules, two windows a few
    seconds apart (harness.c1_rules_windows): each side's figures and command, the ratios rules
    over plain, the higher steal of the two windows (None: unknown), the seconds waited for a
    quiet host, the side measured first ("plain" or "rules", which also orders the sides in
    results.json) and the host's 1-minute load average after the pair (None: not recorded)."""
    plain: RulesSide
    rules: RulesSide
    command_plain: tuple[str, ...]
    command_rules: tuple[str, ...]
    p50_ratio: float
    p99_ratio: float
    steal: float | None
    waited_s: float
    first: str
    load_1min: float | None = None

    def to_dict(self) -> dict:
        d = {}
        for side in (("plain", "rules") if self.first == "plain" else ("rules", "plain")):
            d[side] = getattr(self, side).to_dict()
            d[f"command_{side}"] = list(getattr(self, f"command_{side}"))
        d.update(p50_ratio=self.p50_ratio, p99_ratio=self.p99_ratio, steal=self.steal, waited_s=self.waited_s,
                 first=self.first)
        if self.load_1min is not None:
            d["load_1min"] = self.load_1min
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RulesPair:
        return cls(**{**d, "plain": RulesSide.from_dict(d["plain"]), "rules": RulesSide.from_dict(d["rules"]),
                      "command_plain": tuple(d["command_plain"]), "command_rules": tuple(d["command_rules"])})


_TRIAL_OPTIONAL = ("batched_users_per_s", "c1_req_per_s", "c1_p50_ms", "c1_p99_ms", "waited_s", "steal", "score",
                   "command", "command_batched", "command_c1", "server_time")


@dataclass(frozen=True)
class TuningTrial:
    """One tuning candidate measured on its own server (harness.tune): the knobs
    (builder.repository.Tuning as a dict), req/s and p99 ms at concurrency 16, users/s at 64
    users per request, req/s and p50/p99 ms at concurrency 1, seconds waited for a quiet host,
    the steal of the three windows, the score (geometric mean of the three throughputs), the
    three commands and Triton's per-model server time (us per request). Fields a run before
    them did not write are None and not written back."""
    tuning: dict
    throughput: float
    p99_ms: float
    batched_users_per_s: float | None = None
    c1_req_per_s: float | None = None
    c1_p50_ms: float | None = None
    c1_p99_ms: float | None = None
    waited_s: float | None = None
    steal: tuple[float | None, ...] | None = None
    score: float | None = None
    command: tuple[str, ...] | None = None
    command_batched: tuple[str, ...] | None = None
    command_c1: tuple[str, ...] | None = None
    server_time: dict | None = None

    @property
    def pipeline(self) -> str:
        """"ensemble" (three models) or "fused" (one Python model)."""
        return self.tuning.get("pipeline", "ensemble")

    def to_dict(self) -> dict:
        d = {"tuning": self.tuning, "throughput": self.throughput, "p99_ms": self.p99_ms}
        for k in _TRIAL_OPTIONAL:
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TuningTrial:
        tuples = {k: tuple(d[k]) for k in ("steal", "command", "command_batched", "command_c1") if k in d}
        return cls(**{**d, **tuples})


@dataclass(frozen=True)
class TuningResult:
    """The tuning: every trial, the chosen one (harness.best_trial), the default (the first
    trial: the "before") and the latency budget on the lone user's p99 (ms; None: score alone,
    or a run before the budget; always written, so such a run writes it back as null)."""
    trials: tuple[TuningTrial, ...]
    best: TuningTrial
    default: TuningTrial
    p99_budget_ms: float | None = None

    def to_dict(self) -> dict:
        return {"trials": [t.to_dict() for t in self.trials], "best": self.best.to_dict(),
                "default": self.default.to_dict(), "p99_budget_ms": self.p99_budget_ms}

    @classmethod
    def from_dict(cls, d: dict) -> TuningResult:
        return cls(tuple(TuningTrial.from_dict(t) for t in d["trials"]), TuningTrial.from_dict(d["best"]),
                   TuningTrial.from_dict(d["default"]), d.get("p99_budget_ms"))


@dataclass(frozen=True, kw_only=True)
class PerfResults:
    """Everything one `aerec perf` run measured (results.json). Typed: the tuning, each network
    alone (`model_level`, keyed `<network>_b<batch>[_shm]`), the `recommend` sweeps (`ensemble`,
    keyed recommend_grpc / recommend_http / recommend_grpc_b64), the lone user's windows and its
    pairs of windows without and with rules. Plain dicts, as perf/harness.py and its helpers
    write them: the plan, the baselines (users/s, GFLOP/s, FLOPs per user), Triton's statistics
    (us per request), the peers (perf.peers.bench.compare), Model Analyzer, the soak
    (perf.soak.SoakResult) and the configs. Sections a run before them did not write are None
    and not written back."""
    run: str
    runs: dict | None = None                 # role -> run folder
    networks: list[str] | None = None
    stamp: str
    mode: str                                # "quick" or "full"
    users: int
    dataset: dict
    plan: dict
    baselines: dict
    tuning: TuningResult
    model_analyzer: dict | None = None
    model_level: dict[str, ModelLevel]
    server_time_model_level: dict | None = None
    ensemble: dict[str, Sweep]
    c1_windows: tuple[LoneUserWindow, ...] | None = None
    c1_rules_windows: tuple[RulesPair, ...] | None = None
    http: dict | None = None
    naive: dict                              # {"naive", "triton_http_json"}: perf/load.py rows, one user per request
    soak: dict | None = None
    server_config: dict | None = None        # model name -> config.pbtxt text
    server_time: dict | None = None          # model name -> us per request, the default pipeline
    seconds: float

    def to_dict(self) -> dict:
        """results.json's layout, in the order the harness writes its sections."""
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name in ("model_level", "ensemble"):
                v = {k: x.to_dict() for k, x in v.items()}
            elif f.name == "tuning":
                v = v.to_dict()
            elif f.name in ("c1_windows", "c1_rules_windows"):
                v = [w.to_dict() for w in v]
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PerfResults:
        """A results.json's dict (today's or an older layout). Raises TypeError on a section it
        does not know or a required one missing."""
        typed = {"tuning": TuningResult.from_dict(d["tuning"]),
                 "model_level": {k: ModelLevel.from_dict(v) for k, v in d["model_level"].items()},
                 "ensemble": {k: Sweep.from_dict(v) for k, v in d["ensemble"].items()}}
        if d.get("c1_windows") is not None:
            typed["c1_windows"] = tuple(LoneUserWindow.from_dict(w) for w in d["c1_windows"])
        if d.get("c1_rules_windows") is not None:
            typed["c1_rules_windows"] = tuple(RulesPair.from_dict(w) for w in d["c1_rules_windows"])
        return cls(**{**d, **typed})
