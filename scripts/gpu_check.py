"""`make gpu-check`: what only a machine with a CUDA GPU can show, in one run of a few minutes.

1. One epoch of the deep autoencoder (DeepRecommender's recipe, preset `deeprec-paper`) on
   synthetic ratings at Netflix Prize size (480,189 users x 17,770 items, 100,480,507 ratings;
   builder.data.synthetic.synthetic_csr_rows), CUDA: seconds, ratings/s, the epoch's loss.
2. MovieLens-100K u1 end to end on CUDA: train the `deeprec` and `ease` presets, evaluate (test
   RMSE; recall@10 / ndcg@10 for EASE).
3. The ONNX graph exported from the CUDA model equals the CPU export within 1e-5 (both run by
   ONNX Runtime on the CPU over u1's test users).
4. ONNX Runtime's CUDA execution provider, where the installed onnxruntime has it: its output
   against the CPU provider's.

Writes the figures as JSON (date, device name, versions) to --out (default
runs/gpu-check.json). Without a GPU it exits with status 2 and says so; `--cpu-smoke` runs the
same steps on the CPU at tiny sizes (a test proves the script runs).

    python scripts/gpu_check.py [--out runs/gpu-check.json] [--cpu-smoke]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NETFLIX = {"users": 480_189, "items": 17_770, "ratings": 100_480_507}
SMOKE = {"users": 512, "items": 300, "ratings": 8_000}
ONNX_TOLERANCE = 1e-5


def netflix_epoch(device: torch.device, size: dict, smoke: bool, steps: int | None = None) -> dict:
    """One epoch of deeprec-paper over synthetic ratings of `size`, on `device`; with `steps`, only
    that many batches are timed and the epoch is projected from them (every batch has one shape)."""
    from builder.config import TrainConfig
    from builder.data.synthetic import synthetic_csr_rows
    from builder.presets import preset
    from builder.train import make_model, make_optimizer, train_step

    start = time.perf_counter()
    ratings = synthetic_csr_rows(size["users"], size["items"], size["ratings"], chunk=1024 if smoke else 8192)
    generate_s = time.perf_counter() - start
    print(f"netflix-size ratings generated: {ratings.nnz:,} in {generate_s:.1f} s", flush=True)
    config = TrainConfig(device=str(device)).updated(**preset("deeprec-paper"))
    torch.manual_seed(0)
    model = make_model(config, size["items"]).to(device)
    optimizer = make_optimizer(config, model.parameters())
    gen = torch.Generator(device=device).manual_seed(0)
    order = np.random.default_rng(0).permutation(ratings.shape[0])
    batches = -(-len(order) // config.batch_size)
    timed = batches if steps is None else min(steps, batches)
    losses = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, timed * config.batch_size, config.batch_size):
        if len(losses) % 500 == 0:
            print(f"  batch {len(losses)}/{timed}: {time.perf_counter() - start:.1f} s", flush=True)
        rows = ratings[np.sort(order[i:i + config.batch_size])]
        x = torch.from_numpy(rows.toarray()).to(device, non_blocking=True)
        losses.append(train_step(model, optimizer, x, config, gen, ratings.nnz))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    epoch_s = seconds * batches / timed
    return {"users": int(ratings.shape[0]), "items": int(ratings.shape[1]), "ratings": int(ratings.nnz),
            "preset": "deeprec-paper", "hidden": list(config.hidden), "batch_size": config.batch_size,
            "generate_seconds": round(generate_s, 2), "batches_timed": timed, "batches_in_epoch": batches,
            "timed_seconds": round(seconds, 2), "epoch_seconds": round(epoch_s, 2),
            "epoch_projected": timed < batches,
            "ratings_per_second": round(ratings.nnz / epoch_s), "first_batch_mse": losses[0],
            "last_100_batches_mse": float(np.mean(losses[-100:]))}


def ml100k_end_to_end(device: torch.device, smoke: bool) -> tuple[dict, object, object]:
    """deeprec and ease trained and evaluated on ML-100K u1: (figures, deeprec result, dataset)."""
    from builder.config import TrainConfig
    from builder.data import build_dataset, load_movielens_100k, split_canonical
    from builder.presets import preset
    from builder.train import train

    ratings = load_movielens_100k()
    dataset = build_dataset(ratings, *split_canonical(ratings, "u1"), "ml-100k/u1")
    out, results = {}, {}
    for name in ("deeprec", "ease"):
        options = preset(name)
        if smoke and name == "deeprec":   # a tiny run: no teacher, no refit, one epoch
            options.update(epochs=1, teacher="", distill=0.0, refit=False)
        start = time.perf_counter()
        result = train(TrainConfig(device=str(device)).updated(**options), dataset, progress=False)
        keep = ("test_rmse", "recall@10", "ndcg@10", "best_epoch")
        out[name] = {"seconds": round(time.perf_counter() - start, 2),
                     **{k: v for k, v in result.metrics.items() if k in keep}}
        results[name] = result
    return out, results["deeprec"], dataset


def onnx_parity(result, dataset, device: torch.device) -> dict:
    """The CUDA model's ONNX export against the CPU model's, both run by ONNX Runtime on the CPU,
    and ONNX Runtime's CUDA provider where present."""
    import onnxruntime as ort

    from builder.export import INPUT, OUTPUT, export_onnx_fp32, ort_session
    from builder.predict import orient

    inputs, targets = orient(dataset.train, result.config), orient(dataset.test, result.config)
    rows = np.flatnonzero(np.diff(targets.indptr) > 0)
    x = inputs[rows].toarray().astype(np.float32)
    model = result.model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        cpu_path, gpu_path = Path(tmp) / "cpu.onnx", Path(tmp) / "cuda.onnx"
        export_onnx_fp32(copy.deepcopy(model), x.shape[1], cpu_path)
        on_device = copy.deepcopy(model).to(device).eval()
        example = torch.zeros(2, x.shape[1], device=device)
        torch.onnx.export(on_device, (example,), str(gpu_path), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=17, dynamo=False)
        cpu_out = ort_session(cpu_path).run([OUTPUT], {INPUT: x})[0]
        gpu_out = ort_session(gpu_path).run([OUTPUT], {INPUT: x})[0]
        with torch.no_grad():
            torch_out = on_device(torch.from_numpy(x).to(device)).cpu().numpy()
        diff = float(np.abs(cpu_out - gpu_out).max())
        figures = {"rows": int(len(x)), "cuda_export_vs_cpu_export_max_abs": diff,
                   "tolerance": ONNX_TOLERANCE, "equal": diff <= ONNX_TOLERANCE,
                   "pytorch_on_device_vs_onnx_max_abs": float(np.abs(torch_out - cpu_out).max())}
        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" in providers and device.type == "cuda":
            sess = ort.InferenceSession(str(cpu_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            cuda_out = sess.run([OUTPUT], {INPUT: x})[0]
            figures["onnxruntime_cuda"] = {"providers": sess.get_providers(),
                                           "max_abs_vs_cpu_provider": float(np.abs(cuda_out - cpu_out).max())}
        else:
            figures["onnxruntime_cuda"] = (f"not checked: onnxruntime {ort.__version__} offers {providers}"
                                           if device.type == "cuda" else "not checked: no GPU (--cpu-smoke)")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check.json"))
    parser.add_argument("--cpu-smoke", action="store_true", help="run every step on the CPU at tiny sizes")
    parser.add_argument("--steps", type=int, default=None,
                        help="time only this many batches of the Netflix-size epoch and project the epoch")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        device, size = torch.device("cpu"), SMOKE
    elif torch.cuda.is_available():
        device, size = torch.device("cuda"), NETFLIX
    else:
        print("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing was measured. "
              "Run it on a machine with a GPU, or pass --cpu-smoke to run its steps on the CPU at tiny sizes.",
              file=sys.stderr)
        return 2
    import onnxruntime as ort
    started = time.perf_counter()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({platform.processor()})",
              "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
              "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "onnxruntime": ort.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # ML-100K first (minutes at most), then the long epoch; the JSON is written after each step,
    # so a run cut short keeps what it measured.
    report["ml100k"], deeprec, dataset = ml100k_end_to_end(device, args.cpu_smoke)
    print(f"ml-100k u1: {report['ml100k']}", flush=True)
    args.out.write_text(json.dumps(report, indent=2))
    report["onnx"] = onnx_parity(deeprec, dataset, device)
    print(f"onnx: {report['onnx']}", flush=True)
    args.out.write_text(json.dumps(report, indent=2))
    report["netflix_size_epoch"] = netflix_epoch(device, size, args.cpu_smoke, args.steps)
    print(f"netflix-size epoch: {report['netflix_size_epoch']}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"gpu-check written to {args.out}")
    return 0 if report["onnx"]["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
