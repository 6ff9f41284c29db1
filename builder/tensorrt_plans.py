"""TensorRT engines from the exported ONNX graphs, on today's API: strongly typed networks.

Targets TensorRT 10.x (10.1 and later, where explicit quantization in a strongly typed network
is the supported INT8 path) and TensorRT 11.x, which removed `BuilderFlag.FP16`/`INT8` and the
INT8 calibrators; and TensorRT-RTX 1.x (checked with 1.7). Precision therefore comes from the
graph, never from builder flags: the fp16 ONNX graph builds an fp16 engine, the Q/DQ graph an
INT8 one (NVIDIA's TensorRT developer guide, "Strongly Typed Networks" and "Explicit
Quantization").

Two libraries answer `import`:
- `tensorrt` (full TensorRT, as in NVIDIA's containers): `build_plans` writes `model_<p>.plan`
  beside `model_<p>.onnx`, each with `model_<p>.plan.json` (TensorRT version, GPU, profile),
  sharing one timing cache file (`timing.cache`). These are Triton `tensorrt_plan` models.
- `tensorrt_rtx` (TensorRT for RTX; pip `tensorrt-rtx-cu12`): its Builder and OnnxParser parse and
  build on the CPU, but its engines are not plans for Triton's TensorRT backend. Here a build is a
  check only (`check_variant`): does the graph parse, does it build; nothing is written.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from serving.contract import NETWORK_INPUT as INPUT

# The batch sizes an engine accepts: min/opt/max of its optimisation profile. max equals the
# committed network templates' max_batch_size (model_repository/*_onnx/config.pbtxt), so a plan
# takes every batch Triton's dynamic batcher can form.
PROFILE = {"min": 1, "opt": 64, "max": 256}
TIMING_CACHE = "timing.cache"
PLAN_SOURCES = {"fp32": "model_fp32.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8_trt.onnx"}
NO_GPU = "none: built on CPU"


class TensorRTError(RuntimeError):
    """TensorRT could not parse or build a graph; `.errors` holds the parser's messages."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or []


def import_tensorrt():
    """(module, name): full `tensorrt` when importable, else `tensorrt_rtx`, else (None, None)."""
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return __import__(name), name
        except ImportError:
            continue
    return None, None


def gpu_name() -> str:
    """The first CUDA device's name, or NO_GPU."""
    try:
        import torch  # here: the rest of this module runs without torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return NO_GPU


def tensorrt_unavailable() -> str | None:
    """None when Triton plans can be built here (full TensorRT and a GPU), else why, in one line."""
    trt, name = import_tensorrt()
    if trt is None:
        return "TensorRT plans skipped: neither `tensorrt` nor `tensorrt_rtx` imports on this machine"
    if name == "tensorrt_rtx":
        return (f"TensorRT plans skipped: only TensorRT-RTX {trt.__version__} is installed; its engines are not "
                "Triton tensorrt_plan models (graphs are parse- and build-checked instead)")
    if gpu_name() == NO_GPU:
        return "TensorRT plans skipped: no CUDA GPU visible"
    return None


def build_engine(onnx_path: Path, n_inputs: int, profile: dict | None = None,
                 timing_cache: Path | None = None, trt=None) -> bytes:
    """Parse `onnx_path` (input INPUT float32 [batch, n_inputs]) into a strongly typed network and
    build a serialized engine for batches profile["min"]..["max"], tuned for ["opt"]; returns it.
    `timing_cache`: loaded when the file exists, saved after the build (TensorRT-RTX keeps none:
    its timing cache calls are no-ops). `trt`: the module (default: import_tensorrt()'s).
    Raises TensorRTError with the parser's messages when the graph does not parse, or when the
    build fails."""
    if trt is None:
        trt, _ = import_tensorrt()
        if trt is None:
            raise TensorRTError(tensorrt_unavailable())
    p = {**PROFILE, **(profile or {})}
    logger = trt.Logger(trt.Logger.INTERNAL_ERROR)  # the parser's errors are collected and returned
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"{onnx_path}: TensorRT's ONNX parser rejects the graph: {errors[0] if errors else ''}",
                            errors)
    config = builder.create_builder_config()
    shape = lambda b: (b, n_inputs)  # noqa: E731
    opt = builder.create_optimization_profile()
    opt.set_shape(INPUT, shape(p["min"]), shape(p["opt"]), shape(p["max"]))
    config.add_optimization_profile(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TensorRT-RTX: timing cache calls are no-ops
        cached = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=False)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise TensorRTError(f"{onnx_path}: TensorRT failed to build an engine")
        if timing_cache:
            Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(engine)


def check_variant(onnx_path: Path, n_inputs: int) -> dict:
    """Whether TensorRT (full or RTX, whichever imports) parses and builds `onnx_path` with a
    strongly typed network: {"library", "parses", "builds", "engine_bytes", "errors"}; nothing is
    written. {"library": None, ...} when neither imports."""
    trt, name = import_tensorrt()
    row = {"library": f"{name} {trt.__version__}" if trt else None, "parses": None, "builds": None,
           "engine_bytes": None, "errors": []}
    if trt is None:
        row["errors"] = [tensorrt_unavailable()]
        return row
    try:
        row["engine_bytes"] = len(build_engine(onnx_path, n_inputs, trt=trt))
        row.update(parses=True, builds=True)
    except TensorRTError as e:
        row.update(parses="parser rejects" not in str(e), builds=False, errors=e.errors or [str(e)])
    return row


def build_plans(export_dir: Path, precisions, n_inputs: int, profile: dict | None = None) -> list[dict]:
    """Triton plans for every exported precision: model_<p>.plan from PLAN_SOURCES[p] in
    `export_dir`, with model_<p>.plan.json {"precision", "tensorrt", "gpu", "profile", "onnx"};
    one timing cache (timing.cache) shared by all builds. Raises TensorRTError with
    tensorrt_unavailable()'s reason where Triton plans cannot be built here (no full TensorRT, or
    no GPU), or when a graph does not parse or build."""
    reason = tensorrt_unavailable()
    if reason:
        raise TensorRTError(reason)
    trt, _ = import_tensorrt()
    export_dir = Path(export_dir)
    out = []
    for p in precisions:
        onnx_path = export_dir / PLAN_SOURCES[p]
        plan = export_dir / f"model_{p}.plan"
        plan.write_bytes(build_engine(onnx_path, n_inputs, profile, export_dir / TIMING_CACHE, trt=trt))
        meta = {"precision": p, "tensorrt": trt.__version__, "gpu": gpu_name(),
                "profile": {**PROFILE, **(profile or {})}, "onnx": onnx_path.name}
        plan.with_name(plan.name + ".json").write_text(json.dumps(meta, indent=2))
        out.append(meta)
    return out


def plan_meta(plan: Path) -> dict | None:
    """A plan's saved metadata (model_<p>.plan.json), or None when the plan or its JSON is missing."""
    meta = Path(plan).with_name(Path(plan).name + ".json")
    if not (Path(plan).is_file() and meta.is_file()):
        return None
    return json.loads(meta.read_text())


def build_export_plans(export_dir: Path, precisions) -> list[str]:
    """`aerec export --tensorrt`: plans for an export folder export_run wrote (its
    export_config.json gives the input width), one line per plan; where Triton plans cannot be
    built here, the line that says why, then each variant's parse/build check with whatever
    TensorRT library imports (nothing is raised)."""
    n_inputs = json.loads((Path(export_dir) / "export_config.json").read_text())["n_inputs"]
    reason = tensorrt_unavailable()
    if reason:
        lines = [reason]
        for p in precisions:
            row = check_variant(Path(export_dir) / PLAN_SOURCES[p], n_inputs)
            if row["library"]:
                verdict = "parses and builds" if row["builds"] else f"FAILS: {row['errors'][0]}"
                lines.append(f"check {p} ({PLAN_SOURCES[p]}) with {row['library']}: {verdict}")
        return lines
    try:
        return [f"plan {m['precision']}: TensorRT {m['tensorrt']} on {m['gpu']}, profile {m['profile']}"
                for m in build_plans(export_dir, precisions, n_inputs)]
    except TensorRTError as e:
        return [f"TensorRT plans failed: {e}"]
