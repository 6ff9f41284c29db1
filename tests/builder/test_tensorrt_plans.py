"""TensorRT's ONNX parser and builder on every exported graph, through the real TensorRT-RTX
bindings (they parse and build on the CPU; full TensorRT and a GPU are not available here)."""
import json

import numpy as np
import pytest

from builder.config import TrainConfig
from builder.export import convert_fp16, export_onnx_fp32, quantize_int8
from builder.models import ROW_MODELS
from builder.predict import orient
from builder.tensorrt_plans import (NO_GPU, PROFILE, TensorRTError, build_engine, build_export_plans, build_plans,
                                    check_variant, import_tensorrt, tensorrt_unavailable)
from builder.train import make_model

trt, LIBRARY = import_tensorrt()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(trt is None, reason="neither tensorrt nor tensorrt_rtx imports (pip install "
                                                     "tensorrt-rtx-cu12 for the CPU parse/build check)")]


def variants(name, dataset, folder):
    """fp32, fp16 and both int8 Q/DQ graphs of an untrained `name` network, calibrated on 64 real
    ML-100K u1 training rows: {variant: path}, and the input width."""
    config = TrainConfig(model=name, hidden=[32, 16] if name in ("deeprec", "sae", "recvae") else [32], device="cpu")
    inputs = orient(dataset.train, config)
    model = make_model(config, inputs.shape[1]).eval()
    paths = {v: folder / f"{name}_{v}.onnx" for v in ("fp32", "fp16", "int8", "int8_trt")}
    export_onnx_fp32(model, inputs.shape[1], paths["fp32"])
    convert_fp16(paths["fp32"], paths["fp16"])
    calib = inputs[:64].toarray().astype(np.float32)
    quantize_int8(paths["fp32"], paths["int8"], calib, "minmax")
    quantize_int8(paths["fp32"], paths["int8_trt"], calib, "minmax", quantize_bias=False)
    return paths, inputs.shape[1]


@pytest.mark.parametrize("name", ROW_MODELS)
def test_every_graph_for_tensorrt_parses_and_builds_strongly_typed(name, u1, tmp_path):
    paths, width = variants(name, u1, tmp_path)
    for variant in ("fp32", "fp16", "int8_trt"):
        row = check_variant(paths[variant], width)
        assert row["library"].startswith(LIBRARY)
        assert row["parses"] and row["builds"] and row["engine_bytes"] > 0, (variant, row["errors"])
    # ONNX Runtime's default int8 graph dequantizes INT32 biases: TensorRT's parser says so, unless the
    # network has no bias the quantizer touches (then both graphs are the same).
    row = check_variant(paths["int8"], width)
    if not row["builds"]:
        assert row["parses"] is False and any("Int32" in e for e in row["errors"]), row["errors"]


def test_timing_cache_profile_and_parser_errors(u1, tmp_path):
    paths, width = variants("deeprec", u1, tmp_path)
    cache = tmp_path / "timing.cache"
    engine = build_engine(paths["fp16"], width, {"opt": 32}, timing_cache=cache, trt=trt)
    assert len(engine) > 0 and cache.is_file()          # saved after the build ...
    assert len(build_engine(paths["fp16"], width, timing_cache=cache, trt=trt)) > 0   # ... and loaded again
    with pytest.raises(TensorRTError, match="parser rejects") as e:
        build_engine(paths["int8"], width, trt=trt)
    assert e.value.errors and "DequantizeLinear" in e.value.errors[0]
    bad = tmp_path / "not_onnx.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(TensorRTError):
        build_engine(bad, width, trt=trt)
    assert PROFILE["max"] == 256   # the network templates' max_batch_size


@pytest.mark.skipif(LIBRARY != "tensorrt_rtx", reason="full TensorRT is installed: Triton plans are built instead")
def test_rtx_engines_are_checks_never_plans(u1, tmp_path):
    paths, width = variants("sae", u1, tmp_path)
    export = tmp_path / "export"
    export.mkdir()
    for variant, target in (("fp32", "model_fp32.onnx"), ("fp16", "model_fp16.onnx"),
                            ("int8_trt", "model_int8_trt.onnx")):
        paths[variant].rename(export / target)
    (export / "export_config.json").write_text(json.dumps({"n_inputs": width}))
    reason = tensorrt_unavailable()
    assert reason.startswith("TensorRT plans skipped:") and "TensorRT-RTX" in reason and "\n" not in reason
    with pytest.raises(TensorRTError, match="TensorRT-RTX"):
        build_plans(export, ["fp32"], width)
    lines = build_export_plans(export, ["fp32", "fp16", "int8"])
    assert lines[0] == reason
    assert all("parses and builds" in line for line in lines[1:]) and len(lines) == 4
    assert not list(export.glob("*.plan")) and not list(export.glob("*.engine"))
    assert NO_GPU == "none: built on CPU"
