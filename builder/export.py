"""Export a trained run to ONNX (fp32, fp16, int8 with explicit Q/DQ) and measure each variant.

`aerec export RUN_DIR` writes RUN_DIR/export/: model_<precision>.onnx, the int8 calibration
set, precision.json/.md and export_config.json. Everything is built in a temporary folder and
renamed into place at the end, so a failure never leaves a partial export/ behind.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from builder.metrics import recall_at_k, rmse
from builder.models import TOP_N
from serving.ranking import top_k_unrated
from builder.predict import orient
from builder.runs import load_run, load_run_dataset

PRECISIONS = ("fp32", "fp16", "int8")
from serving.contract import NETWORK_INPUT as INPUT, NETWORK_OUTPUT as OUTPUT  # noqa: E402  (stable names)
OPSET = 17
INT8_SPEEDUP_TARGET = 1.5  # on a CPU with AVX-512 VNNI


class ExportError(ValueError):
    """The run cannot be exported as asked (unknown precision or calibration, missing run, a model that cannot be
    served)."""
    pass


@dataclass
class ExportConfig:
    """The export stage's config, saved in export/export_config.json: which precisions, and how int8 is
    calibrated (method and number of training-user vectors)."""
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    calibration_method: str = "minmax"   # minmax | entropy | percentile
    calibration_samples: int = 256       # training-user vectors fed to the calibrator
    seed: int = 0
    opset: int = OPSET


def export_onnx_fp32(model: torch.nn.Module, n_inputs: int, path: Path, opset: int = OPSET) -> None:
    """ONNX with a dynamic batch axis; checked by onnx.checker."""
    model = model.cpu().eval()
    example = torch.zeros(2, n_inputs)
    example[:, :3] = 4.0
    torch.onnx.export(model, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))


def convert_fp16(src: Path, dst: Path) -> None:
    """Weights and compute in fp16, inputs/outputs kept fp32 so clients do not change.

    Cast nodes stay fp32: the converter retypes their outputs but not their `to` attribute.
    """
    from onnxconverter_common import float16
    m16 = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                           op_block_list=float16.DEFAULT_OP_BLOCK_LIST + ["Cast"])
    onnx.save(m16, str(dst))
    onnx.checker.check_model(onnx.load(str(dst)))


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, method: str) -> None:
    """Explicit Q/DQ (symmetric int8, per-channel weights): the form TensorRT's strongly-typed
    builder takes; calibrated on real training-user vectors."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; choose {', '.join(methods)}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 32)))

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {INPUT: b.astype(np.float32)}

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=methods[method],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def ort_session(model, threads: int = 0, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """The project's one way to open an ONNX Runtime CPU session (offline: export checks,
    baselines, benchmarks). `model`: a path, serialized bytes or an onnx.ModelProto; `threads`:
    intra-op threads (0: ONNX Runtime's default, one per physical core); `options`: start from
    these (e.g. with profiling on) instead of fresh SessionOptions."""
    opts = options or ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def throughput(run, n_inputs: int, batch: int, seconds: float = 1.0) -> float:
    """Inferences per second of `run(batch_array)` over about `seconds` of repeated calls."""
    x = np.zeros((batch, n_inputs), np.float32)
    x[:, ::7] = 4.0
    run(x)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(x)
        n += batch
    return n / (time.perf_counter() - start)


def _compare(pred_fn, ref_out, inputs_dense, accuracy, rated, ref_top, k=10) -> dict:
    """The variant's accuracy (see _accuracy), its largest difference from PyTorch's output and
    the share of PyTorch's top-k it keeps."""
    out = pred_fn(inputs_dense)
    name, value = accuracy(out)
    top = top_k_unrated(out, rated, k)
    overlap = float(np.mean([len((set(a) & set(b)) - {-1}) / k for a, b in zip(top.tolist(), ref_top.tolist())]))
    return {name: value, "max_abs_error": float(np.abs(out - ref_out).max()), "top10_overlap": overlap}


def _accuracy(train_cfg, targets, scale, rated):
    """out [rows, n] -> (name, value): test RMSE for a rating model; for a top-N model, whose
    scores are not ratings, recall@10 on the test items rated >= relevant_threshold."""
    if train_cfg.model not in TOP_N:
        t = targets.tocoo()
        return lambda out: ("rmse", rmse(out[t.row, t.col], t.data, scale))
    relevant = targets.multiply(targets >= train_cfg.relevant_threshold).tocsr()
    relevant.eliminate_zeros()
    rows = np.arange(targets.shape[0])
    return lambda out: ("recall@10", recall_at_k(top_k_unrated(out, rated, 10), relevant, rows))


def export_run(run_dir: Path, config: ExportConfig | None = None, bench_seconds: float = 1.0) -> Path:
    """`aerec export`: RUN_DIR/export/ with model_<precision>.onnx for each of `config.precisions` (fp32; fp16
    weights with fp32 inputs and outputs; int8 as explicit Q/DQ calibrated on training users),
    precision.json/.md and export_config.json; returns that folder.

    Each variant runs on the run's test users ([rows, n_inputs] float32 in, the same shape out) and is
    compared with PyTorch: test RMSE (rating models) or recall@10 (top-N models), the largest absolute
    difference, the share of PyTorch's top-10 kept, and ONNX Runtime throughput (inferences/s at batch 1 and
    64, over `bench_seconds` each). Built in a temporary folder and renamed into place: a failure leaves any
    previous export/ as it was. Raises ExportError for an unknown precision or calibration method, a missing
    run folder or a model that is not user-based; FileNotFoundError / ValueError as load_run does.
    Quantization: ONNX Runtime's quantize_static (QDQ format, symmetric, per-channel weights), the form
    TensorRT's explicit-quantization path takes."""
    config = config or ExportConfig()
    run_dir = Path(run_dir)
    bad = [p for p in config.precisions if p not in PRECISIONS]
    if bad:
        raise ExportError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: run folder not found")
    train_cfg, model = load_run(run_dir)
    if getattr(model, "full_matrix", False):
        raise ExportError(f"{run_dir}: {train_cfg.model} predicts the whole rating matrix in one forward "
                          "(offline accuracy only); export a user-based model to serve")
    dataset = load_run_dataset(run_dir)
    inputs, targets = orient(dataset.train, train_cfg), orient(dataset.test, train_cfg)
    rows = np.flatnonzero(np.diff(targets.indptr) > 0)  # test users (or items), real vectors
    x = inputs[rows].toarray().astype(np.float32)
    rated = x != 0
    n_inputs = inputs.shape[1]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    accuracy = _accuracy(train_cfg, targets[rows], dataset.scale, rated)
    metric, ref_value = accuracy(ref)
    ref_top = top_k_unrated(ref, rated, 10)

    final = run_dir / "export"
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=run_dir))
    try:
        fp32 = tmp / "model_fp32.onnx"
        export_onnx_fp32(model, n_inputs, fp32, config.opset)
        report = {"pytorch": {metric: ref_value}, "metric": metric, "run": str(run_dir),
                  "test_rows": int(len(rows)), "calibration_method": config.calibration_method}
        torch_threads = torch.get_num_threads()
        def torch_run(b):
            with torch.no_grad():
                return model(torch.from_numpy(b))
        for batch in (1, 64):
            report["pytorch"][f"throughput_b{batch}"] = throughput(torch_run, n_inputs, batch, bench_seconds)
        for precision in config.precisions:
            path = tmp / f"model_{precision}.onnx"
            if precision == "fp16":
                convert_fp16(fp32, path)
            elif precision == "int8":
                rng = np.random.default_rng(config.seed)
                # Calibrate on training rows only (never test targets); record which rows.
                train_rows = np.flatnonzero(np.diff(inputs.indptr) > 0)
                pick = np.sort(rng.choice(train_rows, min(config.calibration_samples, len(train_rows)), replace=False))
                calib = inputs[pick].toarray().astype(np.float32)
                np.savez_compressed(tmp / "calibration.npz", rows=pick, method=config.calibration_method)
                quantize_int8(fp32, path, calib, config.calibration_method)
            sess = ort_session(path, torch_threads)
            run = lambda b, s=sess: s.run([OUTPUT], {INPUT: b})[0]  # noqa: E731
            row = _compare(run, ref, x, accuracy, rated, ref_top)
            row.update({f"{metric}_delta": row[metric] - ref_value},
                       throughput_b1=throughput(run, n_inputs, 1, bench_seconds),
                       throughput_b64=throughput(run, n_inputs, 64, bench_seconds),
                       file=path.name, bytes=path.stat().st_size)
            report[precision] = row
        if "int8" in report and "fp32" in report:
            report["int8"]["speedup_b64_vs_fp32"] = report["int8"]["throughput_b64"] / report["fp32"]["throughput_b64"]
        (tmp / "precision.json").write_text(json.dumps(report, indent=2))
        (tmp / "precision.md").write_text(precision_markdown(report))
        (tmp / "export_config.json").write_text(json.dumps(
            {**asdict(config), "onnxruntime": ort.__version__, "onnx": onnx.__version__,
             "torch": torch.__version__, "input": INPUT, "output": OUTPUT, "n_inputs": n_inputs}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def precision_markdown(report: dict) -> str:
    """The precision report (one row per variant beside PyTorch's) as Markdown, from the dict export_run writes
    to precision.json."""
    metric = report.get("metric", "rmse")  # a top-N model's scores are not ratings: recall@10
    label = "RMSE" if metric == "rmse" else metric
    lines = [f"# Precision report: {report['run']}", "",
             f"PyTorch fp32 test {label} {report['pytorch'][metric]:.5f} over {report['test_rows']} test rows; "
             "throughput is ONNX Runtime CPU, inferences/s, measured in this run.", "",
             f"| variant | {label} | change | top-10 overlap | max abs error | thr. b1 | thr. b64 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    p = report["pytorch"]
    lines.append(f"| pytorch | {p[metric]:.5f} | 0 | 1.000 | 0 | "
                 f"{p['throughput_b1']:.0f} | {p['throughput_b64']:.0f} |")
    for name in PRECISIONS:
        if name in report:
            r = report[name]
            lines.append(f"| {name} | {r[metric]:.5f} | {r[f'{metric}_delta']:+.5f} | {r['top10_overlap']:.3f} | "
                         f"{r['max_abs_error']:.2e} | {r['throughput_b1']:.0f} | {r['throughput_b64']:.0f} |")
    if "int8" in report and "fp32" in report:
        ratio = report["int8"]["speedup_b64_vs_fp32"]
        verdict = "meets" if ratio >= INT8_SPEEDUP_TARGET else f"misses by {INT8_SPEEDUP_TARGET - ratio:.2f}x"
        lines += ["", f"int8 (Q/DQ, {report.get('calibration_method', 'minmax')} calibration) runs at "
                  f"{ratio:.2f}x fp32 at batch 64: {verdict} the {INT8_SPEEDUP_TARGET}x target."]
    return "\n".join(lines) + "\n"
