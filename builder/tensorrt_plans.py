"""TensorRT plans from the exported ONNX graphs (fp32, fp16, int8 from the Q/DQ graph).

Written against TensorRT 10's public API and kept small: TensorRT cannot be installed on the
machines this project is developed on, so this path runs only where `import tensorrt` works
and a GPU is visible; anywhere else `tensorrt_unavailable()` says why in one line.
INT8 uses the explicit Q/DQ graph with a strongly-typed network (implicit calibrators are
deprecated since TensorRT 10.1 and removed in 11).
"""
from __future__ import annotations

import json
from pathlib import Path

from builder.export import INPUT


def tensorrt_unavailable() -> str | None:
    """None when plans can be built here, else the reason in one line."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT plans skipped: `import tensorrt` failed (no TensorRT on this machine)"
    try:
        import torch
        if not torch.cuda.is_available():
            return "TensorRT plans skipped: no CUDA GPU visible"
    except ImportError:
        return "TensorRT plans skipped: cannot check for a GPU"
    return None


def build_plan(onnx_path: Path, plan_path: Path, precision: str, n_inputs: int,
               min_batch: int = 1, opt_batch: int = 64, max_batch: int = 256,
               timing_cache: Path | None = None) -> dict:
    """Build one serialized engine from `onnx_path` ([batch, n_inputs] float32 input, batches
    min_batch..max_batch, tuned for opt_batch) to `plan_path`; returns the metadata saved beside
    it (plan_path with .json). Raises RuntimeError when TensorRT cannot parse or build the graph.
    Uses TensorRT 10's strongly typed networks for int8 (NVIDIA's TensorRT developer guide,
    "Explicit Quantization")."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8":
        # Q/DQ nodes carry the types; a strongly-typed network honours them exactly.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (min_batch, n_inputs), (opt_batch, n_inputs), (max_batch, n_inputs))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} plan from {onnx_path}")
    Path(plan_path).write_bytes(bytes(engine))
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = {"precision": precision, "tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(0),
            "profile": {"min": min_batch, "opt": opt_batch, "max": max_batch}, "onnx": Path(onnx_path).name}
    Path(plan_path).with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta


def compare_with_onnxruntime(onnx_path: Path, plan_path: Path) -> bool:
    """Polygraphy's comparison of the plan against ONNX Runtime on the same inputs."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_path))),
               TrtRunner(EngineFromBytes(Path(plan_path).read_bytes()))]
    results = Comparator.run(runners)
    return bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=1e-2, rtol=1e-2)))


def build_plans(export_dir: Path, precisions, n_inputs: int, **profile) -> list[dict]:
    """Plans for every exported precision (model_<p>.plan beside model_<p>.onnx in `export_dir`),
    sharing one timing cache; each plan's metadata says whether it matches ONNX Runtime. Raises
    RuntimeError with tensorrt_unavailable()'s reason where plans cannot be built."""
    reason = tensorrt_unavailable()
    if reason:
        raise RuntimeError(reason)
    export_dir = Path(export_dir)
    cache = export_dir / "timing.cache"
    out = []
    for p in precisions:
        onnx_path = export_dir / f"model_{p}.onnx"
        meta = build_plan(onnx_path, export_dir / f"model_{p}.plan", p, n_inputs, timing_cache=cache, **profile)
        meta["matches_onnxruntime"] = compare_with_onnxruntime(onnx_path, export_dir / f"model_{p}.plan")
        out.append(meta)
    return out


def build_export_plans(export_dir: Path, precisions) -> list[str]:
    """`aerec export --tensorrt`: plans for an export folder export_run wrote (its
    export_config.json gives the input width), as one line per plan; where plans cannot be
    built here, the one line that says why (nothing is raised)."""
    reason = tensorrt_unavailable()
    if reason:
        return [reason]
    n_inputs = json.loads((Path(export_dir) / "export_config.json").read_text())["n_inputs"]
    return [f"plan {meta['precision']}: TensorRT {meta['tensorrt']} on {meta['gpu']}, "
            f"matches ONNX Runtime: {meta['matches_onnxruntime']}"
            for meta in build_plans(export_dir, precisions, n_inputs)]
