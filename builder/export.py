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
from builder.predict import orient
from builder.run_folder import load_run, load_run_dataset
from builder.tensorrt_plans import build_plans, check_variant, tensorrt_unavailable
from serving.contract import NETWORK_INPUT as INPUT, NETWORK_OUTPUT as OUTPUT  # stable names
from serving.ranking import top_k_unrated

PRECISIONS = ("fp32", "fp16", "int8")
VARIANT_ROWS = PRECISIONS + ("int8_trt",)   # the report's rows: int8 comes as two graphs
INT8_TENSORRT = "model_int8_trt.onnx"
# Which engine each exported graph is for (the int8 Q/DQ graph comes twice: see quantize_int8).
ENGINE = {"fp32": "any", "fp16": "any", "int8": "ONNX Runtime (quantized biases)",
          "int8_trt": "TensorRT (float biases)"}
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
    # Also build Triton TensorRT plans (builder.tensorrt_plans.build_plans) where full TensorRT and a
    # GPU exist, and compare them with PyTorch too; elsewhere the report says why not.
    tensorrt_plans: bool = False
    # Compare on at most this many test users (a sample drawn with `seed`); 0: all. Every compared
    # user is a dense [n_inputs] row: at a million items 4 MB each, so all test users may not fit.
    max_test_rows: int = 0


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
    from onnxconverter_common import float16  # here: only an fp16 export pays for its import
    m16 = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                           op_block_list=float16.DEFAULT_OP_BLOCK_LIST + ["Cast"])
    onnx.save(m16, str(dst))
    onnx.checker.check_model(onnx.load(str(dst)))


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, method: str, quantize_bias: bool = True) -> None:
    """Explicit Q/DQ (symmetric int8, per-channel weights) calibrated on real training-user vectors
    (`calibration` [rows, n_inputs] float32), by ONNX Runtime's quantize_static in QDQ format.
    `quantize_bias` True (ONNX Runtime's default) stores biases as INT32 behind DequantizeLinear,
    which ONNX Runtime's CPU kernels fold; TensorRT's ONNX parser rejects an INT32
    DequantizeLinear, so the graph for TensorRT's strongly typed builder keeps float biases
    (quantize_bias False). Raises ExportError for an unknown calibration `method`."""
    # here: quantization's import is slow and only an int8 export needs it
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
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": quantize_bias})


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


# Polygraphy's verdict per variant against PyTorch (SimpleCompareFunc: an element fails only when it
# exceeds both atol and rtol). Measured largest differences on ML-100K u1's test users (deeprec:
# ratings 1-5; EASE: top-N scores): fp32 1.7e-6 / 3.6e-7 (summation order), fp16 3.2e-4 / 1.6e-4,
# int8 Q/DQ 0.25 / 0.016. fp32's 1e-4 leaves room for other CPUs' kernels and still catches any
# real change; fp16's 5e-3 is 15x what was seen (about 11 bits of mantissa through a few
# layers); int8's 0.5 is twice what was seen: single outputs move that much on a rating scale,
# and the report's RMSE and top-10 agreement judge whether that matters.
TOLERANCES = {"fp32": {"atol": 1e-4, "rtol": 1e-4}, "fp16": {"atol": 5e-3, "rtol": 1e-2},
              "int8": {"atol": 0.5, "rtol": 0.1}, "int8_trt": {"atol": 0.5, "rtol": 0.1}}
COMPARE_ROWS = 256  # real test users' rows fed to every runner (the TensorRT profile's max batch)


def polygraphy_compare(reference: np.ndarray, inputs: np.ndarray, onnx_paths: dict,
                       plans: dict | None = None) -> dict:
    """Polygraphy's comparison of each variant with PyTorch on the same real rows.

    `reference`: PyTorch's output [rows, n] float32 for `inputs` [rows, n_inputs]; `onnx_paths`:
    variant name (a key of TOLERANCES) -> ONNX file, run by polygraphy's OnnxrtRunner on the CPU;
    `plans`: variant -> a TensorRT plan, run by TrtRunner (only with full TensorRT and a GPU).
    PyTorch's output enters as a saved RunResults entry ("pytorch"), compared by
    Comparator.compare_accuracy with SimpleCompareFunc at TOLERANCES[variant]. Returns
    {runner: {"passed", "max_abs_error", "max_rel_error", "atol", "rtol"}}, runners named
    "onnxrt:<variant>" and "tensorrt:<variant>"."""
    # here: polygraphy is slow to import and only the accuracy comparison uses it
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # the verdicts are returned, not logged
    feed = [{INPUT: np.ascontiguousarray(inputs, np.float32)}]
    runners = {f"onnxrt:{v}": (OnnxrtRunner(SessionFromOnnx(str(p)), name=f"onnxrt:{v}"), v)
               for v, p in onnx_paths.items()}
    if plans:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner  # imports TensorRT: only with plans
        runners.update({f"tensorrt:{v}": (TrtRunner(EngineFromBytes(Path(p).read_bytes()), name=f"tensorrt:{v}"), v)
                        for v, p in plans.items()})
    out = {}
    for name, (runner, variant) in runners.items():
        results = RunResults()
        results.append(("pytorch", [IterationResult({OUTPUT: reference}, runner_name="pytorch")]))
        results.extend(Comparator.run([runner], data_loader=feed))
        tol = TOLERANCES[variant]
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(**tol))
        # One compare function, one runner pair (pytorch, this runner), one iteration, one output.
        (output,) = accuracy[0][("pytorch", name)][0].values()
        out[name] = {"passed": bool(accuracy), "max_abs_error": float(output.max_absdiff),
                     "max_rel_error": float(output.max_reldiff), **tol}
    return out


def tensorrt_checks(files: dict, n_inputs: int) -> dict:
    """Each variant's TensorRT parse/build check (builder.tensorrt_plans.check_variant: full
    TensorRT or TensorRT-RTX, strongly typed, on the CPU for RTX): variant -> {"library",
    "parses", "builds", "engine_bytes", "errors"}; the parser's errors say why a graph is refused."""
    return {variant: check_variant(path, n_inputs) for variant, path in files.items()}


def _tensorrt_plans(config: ExportConfig, folder: Path, n_inputs: int, report: dict) -> dict:
    """With config.tensorrt_plans: Triton plans for the exported precisions in `folder` where full
    TensorRT and a GPU exist ({precision: plan path}); report["tensorrt_plans"] gets the plans'
    metadata, or the reason none were built."""
    if not config.tensorrt_plans:
        return {}
    reason = tensorrt_unavailable()
    if reason:
        report["tensorrt_plans"] = {"skipped": reason}
        return {}
    metas = build_plans(folder, config.precisions, n_inputs)
    report["tensorrt_plans"] = {"built": metas}
    return {m["precision"]: folder / f"model_{m['precision']}.plan" for m in metas}


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
    TensorRT's explicit-quantization path takes; int8 comes as two graphs from one calibration,
    model_int8.onnx (INT32 biases, for ONNX Runtime) and model_int8_trt.onnx (float biases, for
    TensorRT), both measured. Every graph is also compared with PyTorch by polygraphy
    (polygraphy_compare, at TOLERANCES) and parse/build-checked by TensorRT (tensorrt_checks);
    with config.tensorrt_plans, Triton plans are built where full TensorRT and a GPU exist and
    compared with PyTorch the same way."""
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
    if 0 < config.max_test_rows < len(rows):
        rows = np.sort(np.random.default_rng(config.seed).choice(rows, config.max_test_rows, replace=False))
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
        files = {}   # variant -> its ONNX file
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
                # The same calibration, float biases: the Q/DQ graph TensorRT's parser takes.
                quantize_int8(fp32, tmp / INT8_TENSORRT, calib, config.calibration_method, quantize_bias=False)
            files[precision] = path
            if precision == "int8":
                files["int8_trt"] = tmp / INT8_TENSORRT
        for variant, path in files.items():
            sess = ort_session(path, torch_threads)
            run = lambda b, s=sess: s.run([OUTPUT], {INPUT: b})[0]  # noqa: E731
            row = _compare(run, ref, x, accuracy, rated, ref_top)
            row.update({f"{metric}_delta": row[metric] - ref_value},
                       throughput_b1=throughput(run, n_inputs, 1, bench_seconds),
                       throughput_b64=throughput(run, n_inputs, 64, bench_seconds),
                       file=path.name, bytes=path.stat().st_size, engine=ENGINE[variant])
            report[variant] = row
        report["tensorrt"] = tensorrt_checks(files, n_inputs)
        plans = _tensorrt_plans(config, tmp, n_inputs, report)
        report["polygraphy"] = polygraphy_compare(ref[:COMPARE_ROWS], x[:COMPARE_ROWS], files, plans)
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
    to precision.json: accuracy, top-10 agreement, throughput, polygraphy's verdict against PyTorch and
    TensorRT's parse/build check."""
    metric = report.get("metric", "rmse")  # a top-N model's scores are not ratings: recall@10
    label = "RMSE" if metric == "rmse" else metric
    lines = [f"# Precision report: {report['run']}", "",
             f"PyTorch fp32 test {label} {report['pytorch'][metric]:.5f} over {report['test_rows']} test rows; "
             "throughput is ONNX Runtime CPU, inferences/s, measured in this run. Polygraphy compares each "
             f"graph (its ONNX Runtime runner) with PyTorch on the first {COMPARE_ROWS} test rows.", "",
             f"| variant | for | {label} | change | top-10 overlap | max abs error | thr. b1 | thr. b64 "
             "| polygraphy (atol, rtol) | max rel error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    p = report["pytorch"]
    lines.append(f"| pytorch | | {p[metric]:.5f} | 0 | 1.000 | 0 | "
                 f"{p['throughput_b1']:.0f} | {p['throughput_b64']:.0f} | | |")
    poly = report.get("polygraphy", {})
    for name in VARIANT_ROWS:
        if name in report:
            r = report[name]
            g = poly.get(f"onnxrt:{name}")
            verdict = (f"{'PASS' if g['passed'] else 'FAIL'} ({g['atol']:g}, {g['rtol']:g}) | {g['max_rel_error']:.2e}"
                       if g else "| ")
            lines.append(f"| {name} | {r.get('engine', 'any')} | {r[metric]:.5f} | {r[f'{metric}_delta']:+.5f} | "
                         f"{r['top10_overlap']:.3f} | {r['max_abs_error']:.2e} | {r['throughput_b1']:.0f} | "
                         f"{r['throughput_b64']:.0f} | {verdict} |")
    for name, g in poly.items():
        if name.startswith("tensorrt:"):
            lines.append(f"\n{name} plan vs PyTorch: {'PASS' if g['passed'] else 'FAIL'} "
                         f"(max abs {g['max_abs_error']:.2e}, max rel {g['max_rel_error']:.2e})")
    if "int8" in report and "fp32" in report:
        ratio = report["int8"]["speedup_b64_vs_fp32"]
        verdict = "meets" if ratio >= INT8_SPEEDUP_TARGET else f"misses by {INT8_SPEEDUP_TARGET - ratio:.2f}x"
        lines += ["", f"int8 (Q/DQ, {report.get('calibration_method', 'minmax')} calibration) runs at "
                  f"{ratio:.2f}x fp32 at batch 64: {verdict} the {INT8_SPEEDUP_TARGET}x target. "
                  f"{report['int8']['file']} (INT32 biases) is for ONNX Runtime; {INT8_TENSORRT} (float biases) "
                  "is for TensorRT, whose ONNX parser refuses INT32 DequantizeLinear."]
    if "skipped" in report.get("tensorrt_plans", {}):
        lines += ["", report["tensorrt_plans"]["skipped"]]
    checks = report.get("tensorrt", {})
    if checks:
        lines += ["", "TensorRT check (strongly typed network; parse and build, nothing kept):", ""]
        for name, c in checks.items():
            if c["library"] is None:
                lines.append(f"- {name}: not checked ({c['errors'][0]})")
            elif c["builds"]:
                lines.append(f"- {name}: parses and builds with {c['library']} ({c['engine_bytes']} bytes)")
            else:
                why = c["errors"][0].splitlines()[0] if c["errors"] else "unknown"
                lines.append(f"- {name}: {'builds FAIL' if c['parses'] else 'does not parse'} with {c['library']}: "
                             f"{why}")
    return "\n".join(lines) + "\n"
