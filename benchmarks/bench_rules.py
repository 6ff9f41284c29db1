"""The lone user with and without per-request rules: `python -m benchmarks.bench_rules`.

`recommend`, gRPC, concurrency 1, the same held-out ML-100K users with 50 EXCLUDE_IDS and 200
INCLUDE_IDS in every request (perf.inputs.ensemble_rules_data) and without, in `--pairs` pairs of
windows as `aerec perf` measures them (perf.harness.c1_rules_windows; every pair is measured here,
not only until one is quiet). Serves the `ease-values` ranker (closed form, seconds) beside a small
SAE rater trained for two epochs; `--default-runs` serves `make perf`'s ranker and `deeprec` rater
instead (trained once and cached under runs/, which takes long on 2 cores). The repository has the
default configs (`aerec repository`'s), or with `--fused` the fused pipeline. Prints each pair,
the quietest pair's figures and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.export import ExportConfig, export_run
from builder.presets import preset
from builder.repository import Tuning, write_repository
from builder.run_folder import load_run_dataset, save_run
from builder.train import train
from perf import inputs
from perf.harness import P99_TARGET_MS, Plan, c1_rules_windows, ensure_runs, rules_summary
from server.launcher import ROOT, TritonServer


FUSED = {"pipeline": "fused", "step_instances": 2, "ort_threads": 1, "step_queue_delay_us": 0}


def small_runs(root: Path) -> tuple[Path, Path]:
    """The `ease-values` ranker and a two-epoch SAE [16, 8] rater on ML-100K u1, exported in fp32."""
    runs = []
    for name, config in (("ranker", TrainConfig(device="cpu").updated(**preset("ease-values"))),
                         ("rater", TrainConfig(model="sae", hidden=[16, 8], epochs=2, batch_size=64, device="cpu"))):
        dataset = load_dataset(config.data, config.split, config.seed)
        run = save_run(train(config, dataset, progress=False), dataset, root / name)
        export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
        runs.append(run)
    return runs[0], runs[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4, help="pairs of windows (without and with rules)")
    ap.add_argument("--interval-ms", type=int, default=1500, help="perf_analyzer's measurement interval")
    ap.add_argument("--users", type=int, default=64, help="held-out users (one request each, cycled)")
    ap.add_argument("--default-runs", action="store_true", help="make perf's ease-values + deeprec runs")
    ap.add_argument("--runs", nargs=2, type=Path, metavar=("RANKER", "RATER"),
                    help="serve these exported run folders instead (e.g. a deeprec rater trained briefly)")
    ap.add_argument("--fused", action="store_true", help="the fused pipeline (two one-thread instances, no delay: "
                    "the configuration `make bench-knobs` favours) instead of the default ensemble")
    args = ap.parse_args()
    tuning = Tuning(**FUSED) if args.fused else Tuning()
    plan = Plan.quick()
    plan.interval_ms = args.interval_ms
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.runs:
            ranker, rater = args.runs
            variants = ["onnx"]
        elif args.default_runs:
            ranker, rater = ensure_runs(None, None)
            variants = ["onnx", "onnx_int8"]
        else:
            ranker, rater = small_runs(out / "runs")
            variants = ["onnx"]
        dataset = load_run_dataset(ranker)
        users = inputs.held_out_users(dataset.test, dataset.train, args.users)
        data = {"ratings": inputs.write(inputs.ensemble_ratings_data(dataset.train, dataset.item_ids, users),
                                        out / "ratings.json"),
                "ratings_rules": inputs.write(inputs.ensemble_rules_data(
                    dataset.train, dataset.item_ids, users, n_exclude=plan.rules_exclude,
                    n_include=plan.rules_include, seed=plan.rules_seed), out / "ratings_rules.json")}
        write_repository(ranker, out / "repo", variants, tuning, rating_run=rater)
        with TritonServer(out / "repo", build_dir=ROOT / "build" / "triton", log=out / "server.log") as server:
            pairs = c1_rules_windows(server, data, plan, out, extra=args.pairs - 1, quiet=0.0)  # every pair
    summary = rules_summary(pairs, P99_TARGET_MS)
    print(f"pipeline: {tuning.pipeline}")
    print("pair  first  p50 ms without / with  p99 ms without / with  p99 ratio  steal  load")
    for i, (p, w) in enumerate(zip(pairs, summary["windows"] if summary else [])):
        print(f"{i:4d}  {p.first:5s}  {w['plain_p50_ms']:6.2f} / {w['rules_p50_ms']:5.2f}        "
              f"{w['plain_p99_ms']:6.2f} / {w['rules_p99_ms']:5.2f}        {w['p99_ratio']:5.2f}  "
              f"{(w['steal'] or 0):5.1%}  {w['load_1min']:4.1f}")
    if summary:
        print(f"quietest pair: p50 {summary['plain']['p50_ms']:.2f} -> {summary['rules']['p50_ms']:.2f} ms, "
              f"p99 {summary['plain']['p99_ms']:.2f} -> {summary['rules']['p99_ms']:.2f} ms "
              f"(x{summary['p99_ratio']:.2f}), steal {(summary['steal'] or 0):.1%}, p99 with rules "
              f"{'within' if summary['within_target'] else 'ABOVE'} {P99_TARGET_MS} ms; median ratio over pairs "
              f"p50 x{summary['p50_ratio_median']:.2f}, p99 x{summary['p99_ratio_median']:.2f}")
        print("command (with rules):", " ".join(pairs[0].command_rules))
    print(json.dumps({"runs": [str(ranker), str(rater)], "summary": summary}))


if __name__ == "__main__":
    main()
