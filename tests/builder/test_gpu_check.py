"""scripts/gpu_check.py: without a GPU it says so and measures nothing; --cpu-smoke runs every step."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the no-GPU message does not apply")
def test_without_a_gpu_it_exits_with_a_clear_message(tmp_path):
    out = tmp_path / "gpu-check.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA GPU visible" in r.stderr and "--cpu-smoke" in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu-check.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-smoke" and report["device"].startswith("cpu") and report["date"]
    epoch = report["netflix_size_epoch"]
    assert epoch["preset"] == "deeprec-paper" and epoch["ratings"] > 0 and epoch["ratings_per_second"] > 0
    assert 0.8 < report["ml100k"]["deeprec"]["test_rmse"] < 1.5 and report["ml100k"]["ease"]["recall@10"] > 0.3
    assert report["onnx"]["equal"] and report["onnx"]["cuda_export_vs_cpu_export_max_abs"] <= 1e-5
    assert report["onnx"]["onnxruntime_cuda"].startswith("not checked")
