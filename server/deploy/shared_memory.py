"""How much /dev/shm a repository's Python models need. Triton's Python backend hands every
tensor of an execution to the model's stub through a shared-memory pool per model instance in
/dev/shm; the pool grows on demand and a request fails with "Failed to increase the shared memory
pool size" when /dev/shm is full. A container's /dev/shm is 64 MiB unless a memory-backed volume
is mounted there, too little for a large catalogue's batches.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format

from serving.contract import MAX_ITEMS_PER_REQUEST

MIB = 1 << 20
# Bytes per element; a STRING (BYTES) element is its 4-byte length and the text, which here is
# an item title or id: bounded at 256 bytes.
DTYPE_BYTES = {"TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_INT16": 2, "TYPE_UINT16": 2,
               "TYPE_FP16": 2, "TYPE_BF16": 2, "TYPE_INT32": 4, "TYPE_UINT32": 4, "TYPE_FP32": 4,
               "TYPE_INT64": 8, "TYPE_UINT64": 8, "TYPE_FP64": 8, "TYPE_STRING": 4 + 256}
# A pool holds an execution's inputs and outputs at once and grows in place: twice one
# execution leaves room for fragmentation and for the next batch's inputs arriving before the
# last one's outputs are freed; plus the pool's initial 1 MiB (shm-default-byte-size).
HEADROOM, POOL_BASE = 2, MIB


def _tensor_bytes(tensor, batch: int, variable: int, type_name) -> int:
    elements = batch
    for d in tensor.dims:
        elements *= variable if d < 0 else d
    return elements * DTYPE_BYTES[type_name(tensor.data_type)]


def shared_memory_bytes(repository: Path, python_models_only: bool = True) -> int:
    """Bytes of /dev/shm that serving `repository` may take at most.

    For every model that runs in a Python stub (backend "python"; with
    `python_models_only=False` also the ONNX networks, which the embedded server runs through
    its Python-based onnxruntime backend, while NVIDIA's container runs them natively), each
    instance's pool must hold one full batch (max_batch_size rows) of its inputs and outputs:
    a variable dimension (-1) of an input is at most MAX_ITEMS_PER_REQUEST items, of an output at
    most the catalogue (TOP_K may be as large as the catalogue). The sum over instances, times
    HEADROOM, plus POOL_BASE per instance. Raises ValueError for a config Triton would refuse."""
    from tritonclient.grpc import model_config_pb2 as mc
    type_name = mc.DataType.Name
    configs = []
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        try:
            configs.append(text_format.Parse(path.read_text(), mc.ModelConfig()))
        except text_format.ParseError as e:
            raise ValueError(f"{path}: not a Triton model config: {e}") from e
    n_items = max([d for c in configs for t in (*c.input, *c.output) for d in t.dims] + [1])
    total = 0
    for c in configs:
        in_stub = c.backend == "python" or (not python_models_only and c.platform == "onnxruntime_onnx")
        if not in_stub:
            continue
        batch = max(c.max_batch_size, 1)
        one = (sum(_tensor_bytes(t, batch, MAX_ITEMS_PER_REQUEST, type_name) for t in c.input)
               + sum(_tensor_bytes(t, batch, n_items, type_name) for t in c.output))
        instances = sum(g.count or 1 for g in c.instance_group) or 1
        total += instances * (HEADROOM * one + POOL_BASE)
    return total


def size_limit(n_bytes: int) -> str:
    """A Kubernetes quantity for `n_bytes`, rounded up to whole MiB, at least 64Mi."""
    return f"{max(64, -(-n_bytes // MIB))}Mi"


def dev_shm_warning(repository: Path, replicas: int = 1, free_bytes: int | None = None,
                    shm: Path = Path("/dev/shm")) -> str | None:
    """A warning to print before the embedded server starts where /dev/shm (`shm`; its free
    space, or `free_bytes`) holds less than `replicas` servers of `repository` may take
    (shared_memory_bytes with the ONNX networks, which the embedded server runs in stubs too);
    None where it holds enough, or where there is no `shm` to measure."""
    need = replicas * shared_memory_bytes(repository, python_models_only=False)
    if free_bytes is None:
        if not shm.is_dir():
            return None
        free_bytes = shutil.disk_usage(shm).free
    if free_bytes >= need:
        return None
    return (f"{shm} has {free_bytes / MIB:,.0f} MiB free, and serving {repository}"
            f"{f' on {replicas} replicas' if replicas > 1 else ''} may take up to {need / MIB:,.0f} MiB there: "
            "requests of large batches may fail with 'Failed to increase the shared memory pool size'. "
            f"Give it more (a container: docker run --shm-size={-(-need // MIB)}m; Kubernetes: the manifests "
            "of `aerec deploy kubernetes` mount one sized for the repository)")
