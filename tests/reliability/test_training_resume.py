"""Training faults: `aerec train` killed with SIGKILL mid-run, then resumed with --resume, ends
with the same metrics and weights as an uninterrupted run with the same seed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

AEREC = str(Path(sys.executable).parent / "aerec")
# Dropout and input corruption make every random generator matter; refit adds a second phase.
OPTIONS = ["--model", "deeprec", "--hidden", "128", "--epochs", "8", "--dropout", "0.3", "--device", "cpu",
           "--set", "corruption=0.2", "--set", "patience=20", "--set", "refit=true", "--quiet",
           "--checkpoint-every", "0"]  # every epoch, so the kill can be placed exactly
TIMINGS = {"train_seconds", "seconds_to_best"}


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([AEREC, "train", *OPTIONS, "--out", str(out), *extra], capture_output=True, text=True,
                          timeout=300)


def _checkpoint_position(path: Path):
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return raw["phase"], raw["epoch"]


def _kill_at(out: Path, phase: str, epoch: int) -> tuple[str, int]:
    """Start training, SIGKILL it as soon as its checkpoint reaches (phase, epoch)."""
    proc = subprocess.Popen([AEREC, "train", *OPTIONS, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt, deadline = out / "checkpoint.pt", time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            pos = _checkpoint_position(ckpt) if ckpt.is_file() else None
            if pos and pos[0] == phase and pos[1] >= epoch:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return pos
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
    pytest.fail(f"training ended (rc {proc.returncode}) before its checkpoint reached {phase} epoch {epoch}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    done = _train(out)
    assert done.returncode == 0, done.stderr
    assert not (out / "checkpoint.pt").exists(), "a finished run keeps no checkpoint"
    return out


def _same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ma.items() if k not in TIMINGS} == {k: v for k, v in mb.items() if k not in TIMINGS}
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(json.loads((a / "history.json").read_text())) == strip(json.loads((b / "history.json").read_text()))


@pytest.mark.parametrize("phase,epoch", [("select", 3), ("refit", 2)])
def test_killed_run_resumes_to_identical_result(uninterrupted, tmp_path, phase, epoch):
    out = tmp_path / "run"
    killed_at = _kill_at(out, phase, epoch)
    assert not (out / "metrics.json").exists(), "the killed run must not have finished"
    refused = _train(out)  # without --resume the interrupted run is not silently overwritten
    assert refused.returncode != 0 and "--resume" in refused.stderr + refused.stdout
    resumed = _train(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    print(f"killed at {killed_at}, resumed: test RMSE "
          f"{json.loads((out / 'metrics.json').read_text())['test_rmse']:.6f}")
    _same_run(uninterrupted, out)
    assert not (out / "checkpoint.pt").exists()


def test_resume_with_other_options_is_refused(tmp_path):
    out = tmp_path / "run"
    _kill_at(out, "select", 1)
    other = subprocess.run([AEREC, "train", *OPTIONS, "--lr", "0.01", "--out", str(out), "--resume"],
                           capture_output=True, text=True, timeout=300)
    assert other.returncode != 0
    assert "different options (lr)" in other.stderr + other.stdout
