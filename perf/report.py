"""report.md and its plots from one perf run's results (no measuring here, only writing)."""
from __future__ import annotations

import json
from pathlib import Path

from perf import analyzer
from perf.results import PerfResults, RulesPair, TuningResult
from perf.steal import NOISY

_NAN = float("nan")


def _or_nan(v: float | None) -> float:
    """NaN (printed "nan") for a figure a run before it did not measure."""
    return _NAN if v is None else v


def _plots(out: Path, r: PerfResults) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, rows in (("gRPC", r.ensemble["recommend_grpc"].rows), ("HTTP", r.ensemble["recommend_http"].rows)):
        ax.plot([x.throughput for x in rows], [x.p99_ms for x in rows], "o-", label=f"recommend {key}")
        for x in rows:
            ax.annotate(f"c{x.concurrency}", (x.throughput, x.p99_ms), fontsize=7)
    naive = r.naive["naive"]   # perf/load.py rows
    ax.plot([x["throughput"] for x in naive], [x["p99_ms"] for x in naive], "s--", label="naive service")
    ax.set_xlabel("requests / s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("ensemble: throughput vs p99 latency (labels: concurrency)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ensemble_latency.png", dpi=100)
    plt.close(fig)
    names.append("ensemble_latency.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    models = sorted({v.model for v in r.model_level.values()})
    for m in models:
        pts = sorted((v.batch, v.best_throughput) for v in r.model_level.values()
                     if v.model == m and not v.shared_memory)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (-b)")
    ax.set_ylabel("users / s (model level, gRPC)")
    ax.set_title("served networks: throughput vs batch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "model_level.png", dpi=100)
    plt.close(fig)
    names.append("model_level.png")
    return names


def _bottleneck(times: dict, tuning: TuningResult | None = None) -> str:
    """The sentences naming where server time goes, computed from Triton's statistics, and what
    the fused pipeline (if a trial tried it) changed."""
    steps = {k: v["input_us"] + v["infer_us"] + v["output_us"] for k, v in times.items()
             # "autoencoder": the network's name in results written before ranker/rater
             if k in ("preprocess", "postprocess") or k.startswith(("ranker", "rater", "autoencoder"))}
    if not steps:
        return "No server statistics were collected."
    ranked = sorted(steps.items(), key=lambda kv: -kv[1])
    total = sum(steps.values())
    parts = ", ".join(f"{k} {v:.0f} us ({v / total:.0%})" for k, v in ranked)
    text = (f"Server-side time per request in the default three-model pipeline, by step: {parts}. The largest is "
            f"**{ranked[0][0]}**, the smallest {ranked[-1][0]}.")
    python_share = sum(v for k, v in steps.items() if k in ("preprocess", "postprocess")) / total
    if python_share > 0.5:
        text += (f" The two Python steps take {python_share:.0%}: each request crosses three Python stub"
                 " processes (our CPU onnxruntime backend is one too), each crossing a copy through shared"
                 " memory and a message round trip, more than the network's arithmetic.")
    fused = [t for t in (tuning.trials if tuning else ()) if t.pipeline == "fused"]
    if fused:
        best = max(fused, key=lambda t: t.throughput)
        default = tuning.default
        text += (f" The fused pipeline (the same three steps in one Python model, one hop) serves "
                 f"{best.throughput:,.0f} req/s against {default.throughput:,.0f} "
                 f"({best.throughput / default.throughput:.2f}x) at concurrency 16, p99 "
                 f"{best.p99_ms:.1f} vs {default.p99_ms:.1f} ms.")
    return text


def _readings(base: dict) -> str:
    """The ceilings are read at the start and the end of the run; the higher reading is used."""
    rd = base.get("readings")
    if not rd:
        return "Ceilings read once, at the start of the run."
    parts = [f"{k} {', '.join(f'{v:,.0f}' for v in vals)}" for k, vals in rd.items()]
    return ("Ceilings read at the start and at the end of the run (GEMM GFLOP/s; ORT in-process b64 users/s): "
            + "; ".join(parts) + ". The higher reading of each is used, so no ratio gains from a slow reading.")


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _noise(r: PerfResults, s: dict) -> list[str]:
    """Which figures were read while the host took CPU from us, window by window."""
    st = s.get("steal") or {}
    beside = r.ensemble["recommend_grpc_b64"].ort_inprocess
    lines = ["## Noise: CPU time the hypervisor took (steal)", "",
             "This is a shared 2-core virtual machine; `steal` is the share of CPU time the host gave to "
             f"others while a figure was measured (`/proc/stat`). Above {NOISY:.0%} a figure describes the host "
             "as much as aerec.", "",
             f"- `recommend`, 64 users per request (the best served figure): {_pct(st.get('ensemble_served'))};"
             " ONNX Runtime in-process on the same users, read right before and after it (the ratio uses the "
             "higher): " + (", ".join(f"{v:,.0f} users/s at {_pct(t)}" for v, t in zip(
                 beside.users_per_s, beside.steal)) if beside else "n/a") + ".",
             "- the lone user (`recommend`, gRPC, c=1), every window (after the first, each waits up to "
             f"{r.plan.get('quiet_wait_s', 0):.0f} s for a quiet host); the summary takes the one with the "
             "least steal (chosen by steal, never by latency): "
             + ", ".join(f"p99 {w['p99_ms']:.2f} ms at {_pct(w.get('steal'))}"
                         for w in s.get("p99_ms_concurrency1_windows", [])) + "."]
    dropped = [f"{key.split('_')[1]} c={d.concurrency}" for key in ("recommend_grpc", "recommend_http")
               for d in r.ensemble[key].dropped or ()]
    if dropped:
        lines.append(f"- perf_analyzer found no stable window within the time limit for: {', '.join(dropped)} "
                     "(dropped from this run; the commands are in `results.json`).")
    paired = r.model_level.get("large_w1024_b64_shm")
    if paired and paired.windows:
        lines += ["", "The 17,770-item model (n-512-512-1024), -b 64, tensors in shared memory, each window between "
                  "two roof readings; its fraction uses the higher of the two, and the summary takes the median "
                  "window:", "", "| window | users/s | steal | roof GFLOP/s before / after (steal) | % of roof |",
                  "|---:|---:|---:|---|---:|"]
        for i, w in enumerate(paired.windows):
            g = " / ".join(f"{v:.0f} ({_pct(t)})" for v, t in zip(w.roof_gflops, w.roof_steal))
            lines.append(f"| {i} | {w.users_per_s:,.0f} | {_pct(w.steal)} | {g} | {w.fraction:.1%} |")
    return lines


def rules_section(plan: dict, pairs: list[RulesPair], rules: dict) -> list[str]:
    """The lone user with per-request rules beside the lone user without (harness.rules_summary
    of `pairs`, harness.c1_rules_windows): the quietest pair's p50/p99, their ratio, its steal
    and whether the p99 with rules is within the target, then every pair."""
    plain, ruled = rules["plain"], rules["rules"]
    lines = ["## The lone user with rules", "",
             f"`recommend`, gRPC, concurrency 1, the same users with {plan.get('rules_exclude', 50)} `EXCLUDE_IDS` "
             f"and {plan.get('rules_include', 200)} `INCLUDE_IDS` in every request (drawn per request from the "
             f"catalogue, seed {plan.get('rules_seed', 0)}) and without, in pairs of windows a few seconds apart "
             "(each pair waits for a quiet host; the side measured first alternates). The pair with the least "
             "steal counts (chosen by steal, never by latency).", "",
             "| | p50 ms | p99 ms |", "|---|---:|---:|",
             f"| without rules | {plain['p50_ms']:.2f} | {plain['p99_ms']:.2f} |",
             f"| with rules | {ruled['p50_ms']:.2f} | {ruled['p99_ms']:.2f} |",
             f"| with / without | {rules['p50_ratio']:.2f} | {rules['p99_ratio']:.2f} |", "",
             f"Median ratio over all {len(rules['windows'])} pairs: p50 {rules['p50_ratio_median']:.2f}, "
             f"p99 {rules['p99_ratio_median']:.2f}. "
             f"Steal in that pair: {_pct(rules['steal'])}. The p99 with rules is "
             f"{'within' if rules['within_target'] else 'ABOVE'} the {rules['target_ms']} ms target.", "",
             "| pair | p50 ms without / with | p99 ms without / with | p99 ratio | steal | load (1 min) |",
             "|---:|---|---|---:|---:|---:|"]
    for i, w in enumerate(rules["windows"]):
        load = w.get("load_1min")
        lines.append(f"| {i} | {w['plain_p50_ms']:.2f} / {w['rules_p50_ms']:.2f} | "
                     f"{w['plain_p99_ms']:.2f} / {w['rules_p99_ms']:.2f} | {w['p99_ratio']:.2f} | {_pct(w['steal'])} | "
                     f"{'n/a' if load is None else f'{load:.1f}'} |")
    command = next((w.command_rules for w in pairs if w.command_rules), None)
    if command:
        lines += ["", f"With rules: `{' '.join(command)}` (`results.json`: `c1_rules_windows`)."]
    return lines


def _served(r: PerfResults) -> str:
    """The served networks and the runs they came from (one run in results written before the
    ranker and rater were served together)."""
    runs = r.runs or {"rater": r.run}
    return ", ".join(f"{role} `{path}`" for role, path in runs.items() if path)


def write_report(out: Path, r: PerfResults, s: dict) -> Path:
    """Write report.md in `out` from a run's results and summary (summary.json's dict, see
    harness.summarise): every figure beside the command that measured it."""
    plots = _plots(out, r)
    base = r.baselines
    roof = base["gemm_peak_gflops"]
    ort = base["ml100k"]["ort_batched_b64"]
    tuning = r.tuning
    lines = [
        f"# aerec perf report ({r.stamp}, {r.mode})", "",
        f"Served: {_served(r)}; {r.users} held-out users of {r.dataset.get('name', 'the dataset')}; "
        f"took {r.seconds} s. Every ratio below divides two numbers measured in this run.", "",
        "## Targets", "",
        "| figure | measured | target | met |", "|---|---:|---:|---|",
    ]
    checks = [("ensemble_vs_inprocess_ort", ">="), ("p99_ms_concurrency1", "<="), ("p99_ms_concurrency1_rules", "<="),
              ("served_vs_naive", ">="),
              ("large_model_roof_fraction", ">="), ("served_vs_best_peer", ">="), ("p99_c1_vs_best_peer", "<=")]
    for key, op in checks:
        if key not in s["targets"] or (key == "p99_ms_concurrency1_rules" and not s.get("lone_user_rules")):
            continue   # results from before the peers, or before the rules
        v, t = s.get(key), s["targets"][key]
        met = v is not None and (v >= t if op == ">=" else v <= t)
        lines.append(f"| `{key}` | {v:.3f} | {op} {t} | {'yes' if met else 'NO'} |" if v is not None
                     else f"| `{key}` | n/a | {op} {t} | NO |")
    lines += ["", "`served_vs_naive` and `served_vs_best_peer`: Triton's HTTP/JSON endpoint over the other server, "
              "same generator, same users, each request shape (1 and 64 users per request) at each server's best "
              "concurrency; the lower of the two shapes. `p99_c1_vs_best_peer`: Triton's p99 at concurrency 1, "
              "one user per request, over the lowest peer's (below 1: Triton answers a lone user faster)."]
    if s.get("lone_user_rules"):
        lines += [""] + rules_section(r.plan, r.c1_rules_windows or [], s["lone_user_rules"])
    lines += [""] + _noise(r, s)
    if r.http:
        lines += [""] + peers_section(r.http)
    if r.model_analyzer:
        lines += [""] + model_analyzer_section(r.model_analyzer)
    lines += ["", "## Every figure", "",
              f"Roof: measured FP32 GEMM peak {roof:.1f} GFLOP/s (2048x2048, all cores, the faster of "
              "torch's BLAS and ONNX Runtime's MLAS).", "",
              _readings(base), "",
              "| what | users/s | x ORT in-process | % of roof |", "|---|---:|---:|---:|"]
    f_small = base["ml100k"]["flops_per_user"]

    def row(label, tp, flops=f_small, ref=ort):
        lines.append(f"| {label} | {tp:,.0f} | {tp / ref:.3f} | {tp * flops / 1e9 / roof:.1%} |")
    row("ML-100K: PyTorch eager, one user per forward (seed notebook)", base["ml100k"]["torch_one_per_forward"])
    row("ML-100K: PyTorch batched b64", base["ml100k"]["torch_batched_b64"])
    row("ML-100K: ONNX Runtime in-process b64 fp32 (ceiling: the faster of one session per network on "
        "all cores and one single-thread worker per core)", ort)
    if "ort_int8_batched_b64" in base["ml100k"]:
        row("ML-100K: ONNX Runtime in-process b64, rater int8", base["ml100k"]["ort_int8_batched_b64"])
    for key, v in sorted(r.model_level.items()):
        # Each network against itself in-process (runs before per-network baselines: the pipeline's).
        own = base.get(v.model) or ({} if not v.model.startswith("large") else base["ml100k"])
        flops, ref = own.get("flops_per_user", f_small), own.get("ort_batched_b64", ort)
        how = ", tensors in system shared memory (HTTP)" if v.shared_memory else ""
        row(f"served model level `{v.model}` -b {v.batch}{how}", v.best_throughput, flops, ref)
    for key in ("recommend_grpc", "recommend_http"):
        for x in r.ensemble[key].rows:
            row(f"`{key}` one user/request, c={x.concurrency} (p99 {x.p99_ms:.2f} ms)", x.throughput)
    for x in r.ensemble["recommend_grpc_b64"].rows:
        row(f"`recommend` gRPC, 64 users/request, c={x.concurrency} (p99 {x.p99_ms:.2f} ms)", x.throughput)
    # The naive service's rows and Triton's under its generator are perf/load.py's (dicts).
    for x in r.naive["naive"]:
        row(f"naive hand-written service, c={x['concurrency']} (p99 {x['p99_ms']:.2f} ms)", x["throughput"])
    for x in r.naive["triton_http_json"]:
        row(f"Triton HTTP/JSON under the naive service's generator, c={x['concurrency']}", x["throughput"])
    lines += ["", "## How cost grows with model size", "",
              "| model | hidden | FLOPs/user | ORT in-process b64 users/s | served b64 users/s (gRPC / shared "
              "memory) | served % of roof (best) |",
              "|---|---|---:|---:|---:|---:|"]
    for name in ["ml100k", *sorted(k for k in base if k.startswith("large"))]:
        b = base[name]
        key = f"{name}_b64"
        if name == "ml100k":  # "autoencoder_onnx": its name in results written before ranker/rater
            key = next((k for k in ("rater_onnx_b64", "autoencoder_onnx_b64") if k in r.model_level),
                       "rater_onnx_b64")
        tps = [r.model_level[k].best_throughput if k in r.model_level else float("nan") for k in (key, f"{key}_shm")]
        best = max((t for t in tps if t == t), default=float("nan"))
        shown = " / ".join("n/a" if t != t else f"{t:,.0f}" for t in tps)  # NaN: not measured (quick)
        lines.append(f"| {name} | {b.get('hidden', 'run config')} | {b['flops_per_user'] / 1e6:.1f} M | "
                     f"{b['ort_batched_b64']:,.0f} | {shown} | "
                     f"{best * b['flops_per_user'] / 1e9 / roof:.1%} |")
    if r.soak:
        k = r.soak
        lines += ["", f"## Soak ({k['seconds']:.0f} s, concurrency {k['concurrency']}, gRPC)", "",
                  f"{k['requests']:,} requests ({k['valid']:,} valid, {k['invalid']:,} invalid, each invalid one "
                  f"expecting its own error): {k['throughput']:,.0f} req/s, p50 {k['p50_ms']:.1f} ms, p99 "
                  f"{k['p99_ms']:.1f} ms; failed valid requests {k['valid_failed']}, unexpected answers "
                  f"{k['unexpected']}; server memory (Triton + stubs) {k['rss_start_mb']:.0f} -> "
                  f"{k['rss_end_mb']:.0f} MB ({k['rss_growth']:+.1%}, target <= +10%)."]
    lines += ["", "## Principal bottleneck", "",
              _bottleneck(r.server_time or {}, r.tuning), "",
              "## Tuning (`recommend`, gRPC)", "",
              "Each trial: one user per request at concurrency 16, 64 users per request at concurrency 4, and"
              " one user at a time (concurrency 1); score = geometric mean of the three throughputs. "
              + (f"The choice is the best score among trials whose lone user's p99 is within "
                 f"{tuning.p99_budget_ms:g} ms (Model Analyzer's latency constraint; the best score of all "
                 "when none is)." if tuning.p99_budget_ms else "The choice is the best score."), "",
              "| trial | knobs changed from default | req/s (c=16) | p99 ms | users/s (64/request) "
              "| req/s (c=1) | p99 ms (c=1) | score | steal (c=16 / 64 / c=1) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    default = tuning.default.tuning
    for i, t in enumerate(tuning.trials):
        changed = {k: v for k, v in t.tuning.items() if v != default.get(k)} or "default"
        lines.append(f"| {i} | `{changed}` | {t.throughput:,.0f} | {t.p99_ms:.2f} | "
                     f"{_or_nan(t.batched_users_per_s):,.0f} | {_or_nan(t.c1_req_per_s):,.0f} | "
                     f"{_or_nan(t.c1_p99_ms):.2f} | {t.throughput if t.score is None else t.score:,.0f} | "
                     f"{' / '.join(_pct(v) for v in t.steal or ()) or 'n/a'} |")
    best, dflt = tuning.best, tuning.default
    lines += ["", f"Chosen: `{best.tuning}`: {best.throughput:,.0f} req/s and "
              f"{_or_nan(best.batched_users_per_s):,.0f} users/s at 64 per request, vs "
              f"{dflt.throughput:,.0f} and {_or_nan(dflt.batched_users_per_s):,.0f} for the default "
              f"(score {s['tuning_gain']:.2f}x). Written to `tuned.json`; `aerec repository RUN --tuned {out}` "
              "applies it.", "",
              "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Reproduce", "", "Command lines of every perf_analyzer call are in `results.json`"
              " (`command`/`commands`); the server's configs under `server_config`; the input data under `data/`."
              f" Up to {analyzer.SYNC_MAX_CONCURRENCY} requests in flight, perf_analyzer gives each its own blocking"
              f" thread; above that, {analyzer.CLIENT_THREADS} threads keep them in flight (`--async`): on 2 vCPUs,"
              " 64 blocking client threads take the server's CPU and once stalled perf_analyzer itself.",
              "", "```", json.dumps(r.plan), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _n(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def peers_section(http: dict) -> list[str]:
    """Triton, the serving peers and the hand-written service under one HTTP/JSON generator:
    per server and shape the best throughput, p50/p99 at concurrency 1 and 16, memory, and
    each peer's batching grid with its choice."""
    names = {"triton": "Triton `recommend` (HTTP/JSON)", "naive": "hand-written (stdlib HTTP, PyTorch, no batching)",
             "fastapi": "FastAPI + uvicorn, asyncio micro-batcher", "litserve": "LitServe (its batching)",
             "ray_serve": "Ray Serve (`@serve.batch`)"}
    lines = ["## Triton beside the servers a user would pick instead", "",
             f"Same networks (ONNX Runtime in each peer, the served configs' threads), same users, same lists "
             f"(serving/'s code), one closed-loop HTTP/JSON generator (perf/load.py): concurrency "
             f"{http['concurrency']}, {http['seconds']:g} s per point. Throughput at each server's best "
             "concurrency; a 64-user request counts 64 users.", "",
             "| server | users/request | best c | req/s | users/s | p50 / p99 ms c=1 | p50 / p99 ms c=16 | errors "
             "| RSS MB | batching |", "|---|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for name, v in http["servers"].items():
        if "figures" not in v:
            lines.append(f"| {names.get(name, name)} | - | - | - | - | - | - | - | - | failed: "
                         f"{v.get('error', '')[:120]} |")
            continue
        chosen = v.get("chosen")
        batching = (f"max_batch_size {chosen['max_batch_size']}, wait {chosen['batch_wait_timeout_s'] * 1000:g} ms"
                    if chosen else ("Triton's tuned configs" if name == "triton" else "none"))
        for shape, f in v["figures"].items():
            lines.append(f"| {names.get(name, name)} | {shape} | {f['best_concurrency']} | "
                         f"{_n(f['req_per_s'])} | {_n(f['users_per_s'])} | "
                         f"{_ms(f['p50_c1'])} / {_ms(f['p99_c1'])} | {_ms(f['p50_c16'])} / {_ms(f['p99_c16'])} | "
                         f"{f['errors']} | {v.get('rss_mb', float('nan')):,.0f} | {batching} |")
    lines += ["", "Each peer's batching grid (max_batch_size in requests, wait); the choice is the best geometric "
              "mean over the two shapes of the best users/s:", "",
              "| peer | max_batch_size | wait ms | users/s (1 / 64 per request) | score | start s | chosen |",
              "|---|---:|---:|---|---:|---:|---|"]
    for name, v in http["servers"].items():
        for g in v.get("grid", []):
            best = " / ".join(f"{max(x['users_per_s'] for x in rows):,.0f}" for rows in g["shapes"].values())
            chosen = v.get("chosen") == {"max_batch_size": g["max_batch_size"],
                                         "batch_wait_timeout_s": g["batch_wait_timeout_s"]}
            lines.append(f"| {names.get(name, name)} | {g['max_batch_size']} | {g['batch_wait_timeout_s'] * 1000:g} | "
                         f"{best} | {g['score']:,.0f} | {g['startup_s']:.0f} | {'yes' if chosen else ''} |")
    return lines


def model_analyzer_section(ma: dict) -> list[str]:
    """Model Analyzer's best configuration per searched model beside aerec's tuner's choice."""
    if ma.get("error"):
        return ["## Triton Model Analyzer", "", f"Not run: {ma['error']}"]
    lines = ["## Triton Model Analyzer beside aerec's tuner", "",
             "Model Analyzer (local launch mode, our tritonserver and backends, perf_analyzer 2.50) searched instance "
             "counts, max_batch_size and dynamic batching in this run; aerec's tuner searched what it cannot: "
             "ensemble vs fused pipeline, ONNX Runtime threads and spinning.", "",
             "| model | configurations measured | best (Model Analyzer's rule) | concurrency | infer/s | p99 ms "
             "| within p99 budget | seconds |", "|---|---:|---|---:|---:|---:|---|---:|"]
    for name, res in ma.items():
        if name == "aerec_tuner" or not isinstance(res, dict) or "rows" not in res:
            continue
        best = res["best"].get(name)
        if not best:
            lines.append(f"| `{name}` | {len(res['rows'])} | none (returncode {res['returncode']}"
                         f"{', timed out' if res.get('timed_out') else ''}) | | | | | {res['seconds']:.0f} |")
            continue
        lines.append(f"| `{name}` | {len({r['config'] for r in res['rows']})} | `{best['config']}` "
                     f"(max_batch_size {best['max_batch_size']}, instances {best['instances']}) | "
                     f"{best['concurrency']:.0f} | {best['throughput']:,.0f} | {_ms(best['p99_ms'])} | "
                     f"{'yes' if best['within_budget'] else 'no'} | {res['seconds']:.0f} |")
    t = ma.get("aerec_tuner")
    if t:
        lines += ["", f"aerec's tuner chose `{t['tuning']}`: {t['throughput']:,.0f} req/s at concurrency 16 "
                  f"(p99 {_ms(t['p99_ms'])} ms), lone user's p99 {_ms(t['c1_p99_ms'])} ms (`recommend`, gRPC)."]
    return lines
