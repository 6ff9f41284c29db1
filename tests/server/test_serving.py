"""A real Triton server (the embedded binary) serving the exported network, gRPC and HTTP."""
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.config import TrainConfig
from builder.export import ExportConfig, export_run
from builder.repository import RepositoryError, write_repository
from builder.train import save_run, train
from server.launcher import TritonServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(u1, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    config = TrainConfig(model="deeprec", hidden=[64], dropout=0.5, center=True, last_activation=False,
                         epochs=3, batch_size=64, device="cpu")
    result = train(config, u1, progress=False)
    run = save_run(result, u1, root / "run")
    export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
    repo = root / "model_repository"
    write_repository(run, repo, ["onnx"])
    with TritonServer(repo, build_dir=root / "build") as server:
        yield server, result.model.eval(), run, repo


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_matches_pytorch_on_200_test_users(served, u1, protocol):
    server, model, _, _ = served
    users = np.flatnonzero(np.diff(u1.test.indptr) > 0)[:200]
    x = u1.train[users].toarray().astype(np.float32)
    mod, url = (grpcclient, server.grpc_url) if protocol == "grpc" else (httpclient, server.http_url)
    client = mod.InferenceServerClient(url)
    inp = mod.InferInput("RATINGS", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("autoencoder_onnx", [inp]).as_numpy("PREDICTIONS")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() <= 1e-4


def test_new_build_adds_a_version_and_a_failed_build_keeps_the_old(served, tmp_path):
    _, _, run, repo = served
    copy = tmp_path / "repo"
    write_repository(run, copy, ["onnx"])
    assert write_repository(run, copy, ["onnx"])["models"] == {"autoencoder_onnx": 2}
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    with pytest.raises(RepositoryError, match="model_int8.onnx missing"):
        write_repository(run, copy, ["onnx", "onnx_int8"])
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
    assert not any(p.name.startswith(".repo-") for p in tmp_path.iterdir())


def test_server_loads_configs_without_warnings(served):
    server, *_ = served
    log = server.log.read_text(errors="replace")
    assert "successfully loaded 'autoencoder_onnx'" in log
    config_warnings = [line for line in log.splitlines() if line.startswith("W") and "config" in line.lower()]
    assert config_warnings == []


def test_second_server_on_the_same_build_folder(served):
    """Two servers may share one backend folder (the stub is in use by the first)."""
    server, *_ = served
    with TritonServer(server.repository, build_dir=server.build_dir, log=server.log.with_name("second.log")) as two:
        assert two.ready() and server.ready()
