"""Render a Triton model repository from an exported run: the one place that knows Triton's layout.

Each build adds a numbered version beside the ones already served; the whole repository is
built in a temporary folder, validated, then swapped in, so a failure leaves the old one intact.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import onnx

from builder.export import INPUT, OUTPUT

VARIANTS = {"onnx": "model_fp32.onnx", "onnx_int8": "model_int8.onnx"}


class RepositoryError(ValueError):
    pass


def network_config(name: str, n_items: int, max_batch: int = 256, instances: int = 1,
                   queue_delay_us: int = 100) -> str:
    """config.pbtxt for an autoencoder: platform onnxruntime_onnx runs unchanged on NVIDIA's
    container (native backend) and on the embedded server (our Python-based backend)."""
    return f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {n_items} ] }} ]
output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {n_items} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
'''


def _validate_network(path: Path, n_items: int) -> None:
    g = onnx.load(str(path)).graph
    names = ([i.name for i in g.input], [o.name for o in g.output])
    if names != ([INPUT], [OUTPUT]):
        raise RepositoryError(f"{path}: tensors {names}, expected ([{INPUT}], [{OUTPUT}])")
    dim = g.input[0].type.tensor_type.shape.dim[1].dim_value
    if dim != n_items:
        raise RepositoryError(f"{path}: input width {dim}, expected {n_items}")


def write_repository(run_dir: Path, out: Path, variants=("onnx",)) -> dict:
    """Add one version of each variant's network to the repository at `out`."""
    run_dir, out = Path(run_dir), Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise RepositoryError(f"unknown variant(s) {unknown}; available here: {', '.join(VARIANTS)}")
    export = run_dir / "export"
    cfg_path = export / "export_config.json"
    if not cfg_path.is_file():
        raise RepositoryError(f"{export}: no export found; run `aerec export {run_dir}` first")
    n_items = json.loads(cfg_path.read_text())["n_inputs"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if out.exists():
            shutil.copytree(out, tmp, dirs_exist_ok=True)
        written = {}
        for variant in variants:
            src = export / VARIANTS[variant]
            if not src.is_file():
                raise RepositoryError(f"{src} missing: export with the matching --precision first")
            name = f"autoencoder_{variant}"
            folder = tmp / name
            versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
            version = max(versions, default=0) + 1
            (folder / str(version)).mkdir(parents=True)
            shutil.copy2(src, folder / str(version) / "model.onnx")
            _validate_network(folder / str(version) / "model.onnx", n_items)
            (folder / "config.pbtxt").write_text(network_config(name, n_items))
            written[name] = version
        manifest = {"run": str(run_dir.resolve()), "models": written, "n_items": n_items}
        (tmp / "aerec_repository.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
