"""The Python steps of a built repository (preprocess, postprocess) need numpy and nothing else, so a
GPU repository runs them in any Triton container's Python stub: each model.py is loaded and run by
`python -I -S` (no site-packages) whose sys.path holds only the standard library, numpy and a
stand-in for triton_python_backend_utils (the stub's C module, which exists only inside a running
stub). The networks are not Python steps: ONNX Runtime or TensorRT runs them natively on a GPU.
The fused pipeline runs ONNX Runtime inside its Python model, so it is CPU-only by design."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from builder.data.sources import load_dataset
from builder.repository import write_repository
from conftest import FIXTURES, six_movie_runs

pytestmark = pytest.mark.slow

PB_UTILS = '''
"""Stand-in for the stub's triton_python_backend_utils: the calls the steps make, numpy only."""
import numpy as np


class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class TritonError:
    INVALID_ARG = 3

    def __init__(self, message, code=None):
        self._message, self._code = message, code

    def message(self):
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error = list(output_tensors), error


class Request:
    def __init__(self, tensors):
        self.tensors = {n: Tensor(n, a) for n, a in tensors.items()}


def get_input_tensor_by_name(request, name):
    return request.tensors.get(name)
'''

DRIVER = '''
import importlib.util, json, sys
sys.path[:0] = [{stub!r}]
import numpy as np
import triton_python_backend_utils as pb_utils

def load(folder):
    spec = importlib.util.spec_from_file_location("model_" + folder.replace("/", "_"), folder + "/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    repo, version = folder.rsplit("/", 1)
    model.initialize({{"model_repository": repo, "model_version": version}})
    return model

pre, post = load({pre!r}), load({post!r})
# As Triton hands them to a batched model: [1, ...] per request.
requests = [pb_utils.Request({{"USER_ID": np.array([[{user}]], np.int64), "TOP_K": np.array([[3]], np.int32)}}),
            pb_utils.Request({{"ITEM_IDS": np.array([[{item}]], np.int64), "RATINGS": np.array([[5.0]], np.float32),
                              "TOP_K": np.array([[2]], np.int32)}}),
            pb_utils.Request({{"ITEM_IDS": np.array([[{item}]], np.int64), "RATINGS": np.array([[9.0]], np.float32)}})]
pre_out = pre.execute(requests)
answers = []
for request, response in zip(requests, pre_out):
    if response.error is not None:
        answers.append({{"error": response.error.message()}})
        continue
    out = {{t.name(): t.as_numpy() for t in response.output_tensors}}
    dense = out["DENSE"]
    post_in = pb_utils.Request({{"DENSE": dense, "RATER_PREDICTIONS": dense * 0 + np.arange(dense.shape[1]),
                                "BLOCKED": out["BLOCKED"], "TOP_K": out["TOP_K_OUT"]}})
    (reply,) = post.execute([post_in])
    answers.append({{t.name(): [[v.decode() for v in row] for row in t.as_numpy()] if t.name() == "SOURCE"
                     else t.as_numpy().tolist() for t in reply.output_tensors if t.name() != "TITLES"}})
heavy = sorted(m for m in ("onnx", "onnxruntime", "torch", "scipy", "tritonclient") if m in sys.modules)
print(json.dumps({{"answers": answers, "heavy": heavy, "path": sys.path}}))
'''


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("numpy-only")
    six = load_dataset(str(FIXTURES / "six_movies" / "ratings.dat"), "random", 0)
    ranker, rater = six_movie_runs(six, root, rater_epochs=1)
    write_repository(rater, root / "repo", ["onnx"], device="gpu")
    return root / "repo", six


def numpy_only_dir(root: Path) -> Path:
    """A folder holding numpy (linked from this interpreter's site-packages) and the stand-in."""
    site = Path(np.__file__).resolve().parents[1]
    folder = root / "numpy-only"
    folder.mkdir()
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            os.symlink(site / name, folder / name)
    (folder / "triton_python_backend_utils.py").write_text(PB_UTILS)
    return folder


def test_preprocess_and_postprocess_run_with_numpy_alone(repository, tmp_path):
    repo, six = repository
    stub = numpy_only_dir(tmp_path)
    script = textwrap.dedent(DRIVER).format(stub=str(stub), pre=str(repo / "preprocess" / "1"),
                                            post=str(repo / "postprocess" / "1"),
                                            user=int(six.user_ids[0]), item=int(six.item_ids[0]))
    r = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={"PATH": os.environ.get("PATH", "")})
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert not any("site-packages" in p for p in result["path"])   # nothing installed is reachable ...
    assert result["heavy"] == []                                    # ... and nothing heavy was loaded
    known, folded, bad = result["answers"]
    assert known["N_RECOMMENDED"] == [[3]] and len(known["RECOMMENDED_IDS"][0]) == 3
    assert known["SOURCE"] == [["model"]]
    # The rater's predictions were 0, 1, ..., n-1 per item: the top unrated items are the last ones.
    assert folded["N_RECOMMENDED"] == [[2]]
    assert set(folded["RECOMMENDED_IDS"][0]) <= set(int(i) for i in six.item_ids[-3:])
    assert "outside scale" in bad["error"]   # bad input: a clear per-request error, not a crash
