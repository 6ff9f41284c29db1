"""ONNX Runtime SessionOptions from a Triton model config's parameters.

One reading of the config for both places that open an ONNX Runtime session on the embedded
server: our Python-based `onnxruntime` backend (server/backends/onnxruntime) and the fused
`recommend` model (both get the serving package vendored beside them). The parameter names are
the native C++ backend's, so one config.pbtxt means the same there and in NVIDIA's container.
"""
import os

import onnxruntime as ort

THREADS = "intra_op_thread_count"
SPINNING = "session.intra_op.allow_spinning"   # ONNX Runtime's own session-config key


def session_options(config: dict) -> ort.SessionOptions:
    """`config`: the model config as the JSON dict Triton hands `initialize` (args["model_config"]).
    Threads: the config's THREADS parameter, else $AEREC_ORT_THREADS, else ONNX Runtime's default."""
    params = config.get("parameters", {})
    value = lambda key: params.get(key, {}).get("string_value")  # noqa: E731
    opts = ort.SessionOptions()
    threads = int(value(THREADS) or os.environ.get("AEREC_ORT_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spinning when the config says so (Tuning.ort_spinning):
    # a spinning thread holds a core the frontend threads need between requests.
    spinning = value(SPINNING)
    if spinning is not None:
        opts.add_session_config_entry(SPINNING, spinning)
    return opts
