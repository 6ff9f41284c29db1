"""Loading a large interaction log with string ids: `python -m benchmarks.bench_logs` (`make bench-logs`).

Writes a synthetic log (builder.data.synthetic.synthetic_log: power-law item popularity, string
ids u<n> / sku-<n>, timestamps) as Parquet and as gzip CSV, then for each format loads it in a
fresh process, once with aerec's reader (builder.data.logs.read_log: ids encoded, repeats
summed, a `Ratings` ready to split) and once with pandas' own reader of the same file
(read_parquet / read_csv), recording wall seconds and the process's peak RSS (VmHWM). Last, a
top-N model trains on a log of `--train-events` (Mult-VAE, a few epochs), timed.

    python -m benchmarks.bench_logs --events 20000000 --users 200000 --items 20000 --out /tmp/bench_logs
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LOADERS = {
    "aerec": "from builder.data.logs import read_log; r = read_log(PATH); rows = len(r)",
    "pandas": ("import pandas as pd; f = (pd.read_parquet(PATH) if PATH.endswith('.parquet') "
               "else pd.read_csv(PATH)); rows = len(f)"),
}
PROBE = """
import json, resource, sys, time
PATH = sys.argv[1]
start = time.perf_counter()
{load}
seconds = time.perf_counter() - start
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
print(json.dumps({{"seconds": seconds, "peak_rss_mb": hwm / 1024, "rows": rows}}))
"""


def measure(loader: str, path: Path) -> dict:
    """Load `path` with `loader` in a fresh interpreter: wall seconds (the load alone, imports
    excluded) and peak RSS in MB (the whole process, imports included)."""
    code = PROBE.format(load=LOADERS[loader])
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_files(out: Path, users: int, items: int, events: int) -> dict[str, Path]:
    """The synthetic log as Parquet and gzip CSV under `out` (reused when already written)."""
    from builder.data.synthetic import synthetic_log, write_log
    files = {"parquet": out / f"log_{events}.parquet", "csv.gz": out / f"log_{events}.csv.gz"}
    if not all(p.is_file() for p in files.values()):
        start = time.perf_counter()
        table = synthetic_log(users, items, events)
        for p in files.values():
            write_log(table, p)
        print(f"wrote {events:,} events in {time.perf_counter() - start:.1f} s: "
              + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in files.values()), flush=True)
    return files


def train_time(out: Path, users: int, items: int, events: int, epochs: int) -> dict:
    """Mult-VAE (the preset, `epochs` epochs) trained on a log of `events` events, per-user split:
    load + split + train seconds and the run's recall@10 beside popularity's."""
    from builder.stages import train_run
    from builder.data.synthetic import synthetic_log, write_log
    path = out / f"train_{events}.parquet"
    if not path.is_file():
        write_log(synthetic_log(users, items, events, seed=1), path)
    from builder.presets import preset
    start = time.perf_counter()
    result = train_run({**preset("mult-vae"), "data": str(path), "split": "per-user", "epochs": epochs,
                        "refit": False, "device": "cpu"}, out / f"run_{events}", progress=False)
    m = result.metrics
    return {"events": events, "users": users, "items": items, "epochs": epochs,
            "seconds": round(time.perf_counter() - start, 1), "train_seconds": m["train_seconds"],
            "recall@10": m["recall@10"], "popularity_recall@10": m["popularity_recall@10"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--train-events", type=int, default=2_000_000)
    ap.add_argument("--train-users", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_logs"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    files = write_files(args.out, args.users, args.items, args.events)
    report = {"events": args.events, "users": args.users, "items": args.items, "load": {}}
    for fmt, path in files.items():
        row = {name: measure(name, path) for name in LOADERS}
        a, p = row["aerec"], row["pandas"]
        row["time_ratio"] = a["seconds"] / p["seconds"]
        row["memory_ratio"] = a["peak_rss_mb"] / p["peak_rss_mb"]
        report["load"][fmt] = row
        print(f"{fmt:8s} aerec {a['seconds']:6.1f} s {a['peak_rss_mb']:7.0f} MB | pandas {p['seconds']:6.1f} s "
              f"{p['peak_rss_mb']:7.0f} MB | aerec/pandas time {row['time_ratio']:.2f}x, memory "
              f"{row['memory_ratio']:.2f}x", flush=True)
    if args.train_events:
        report["train"] = train_time(args.out, args.train_users, args.items, args.train_events, args.epochs)
        t = report["train"]
        print(f"mult-vae on {t['events']:,} events ({t['users']:,} users x {t['items']:,} items), {t['epochs']} "
              f"epochs: {t['train_seconds']} s training, {t['seconds']} s with load and split; recall@10 "
              f"{t['recall@10']:.4f} vs popularity {t['popularity_recall@10']:.4f}", flush=True)
    (args.out / "bench_logs.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
