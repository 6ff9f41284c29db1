"""The one reading of a config's ONNX Runtime parameters, shared by our backend and the fused step."""
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from builder.repository import Tuning, network_config
from serving.session_options import SPINNING, session_options


def _config(tuning: Tuning) -> dict:
    """The JSON Triton hands a Python model's initialize() for the config.pbtxt we write."""
    message = text_format.Parse(network_config("m", 10, tuning=tuning), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_thread_count_and_spinning_come_from_the_written_config(monkeypatch):
    monkeypatch.delenv("AEREC_ORT_THREADS", raising=False)
    opts = session_options(_config(Tuning(ort_threads=1, ort_spinning=False)))
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry(SPINNING) == "0"


def test_defaults_leave_onnx_runtime_to_choose(monkeypatch):
    monkeypatch.delenv("AEREC_ORT_THREADS", raising=False)
    opts = session_options(_config(Tuning()))
    assert opts.intra_op_num_threads == 0          # ONNX Runtime's default: all cores
    with pytest.raises(RuntimeError, match="does not have configuration"):   # not set: ORT's default (spin)
        opts.get_session_config_entry(SPINNING)
    monkeypatch.setenv("AEREC_ORT_THREADS", "2")   # the server's environment, when the config is silent
    assert session_options(_config(Tuning())).intra_op_num_threads == 2
