"""Only safe formats for anything a user can swap in: weights (safetensors), checkpoints
(torch.load with weights_only=True), served assets (.npy with allow_pickle=False), configs (JSON)."""
import json
import re
from pathlib import Path

import pytest
import torch

from builder.checkpoint import Checkpoint

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("builder", "server", "client", "perf", "scripts") for p in (ROOT / d).rglob("*.py")]
UNSAFE = {
    r"\bimport pickle\b|\bpickle\.load": "pickle",
    r"allow_pickle\s*=\s*True": "np.load with allow_pickle=True",
    r"\byaml\.load\(": "yaml.load (use safe_load)",
    r"(?<![.\w])(eval|exec)\(": "eval/exec",
}


def test_sources_use_no_unsafe_deserialisation():
    found = []
    for path in SOURCES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in UNSAFE.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {what}")
            if "torch.load(" in line and "weights_only=True" not in line:
                found.append(f"{path.relative_to(ROOT)}:{n}: torch.load without weights_only=True")
            if re.search(r"\bnp\.load\(", line) and "allow_pickle=False" not in line:
                found.append(f"{path.relative_to(ROOT)}:{n}: np.load without allow_pickle=False")
    assert not found, "\n".join(found)


class _Payload:
    """Unpickling this runs code: what a malicious checkpoint would carry."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    config = json.dumps({"model": "deeprec"})
    torch.save({"config": config, "phase": "select", "payload": _Payload(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        Checkpoint(tmp_path, config).load()
    assert not marker.exists(), "the payload ran"
