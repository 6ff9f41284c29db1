"""An installed aerec (a wheel built from this checkout, installed into a folder of its own) builds
a Triton repository: the config templates and the Python models' model.py ship in the package,
and nothing is read from the checkout."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from conftest import FIXTURES, train_and_export

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("builder", "cli", "client", "server", "serving", "perf")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder `pip install --target` filled from a wheel of this checkout's sources (copied
    first, so the build's build/ and egg-info never land in the checkout). No network: the venv's
    setuptools builds it, no dependency is installed (the venv has them)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "results"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "wheel"),
                          str(src)], check=True, cwd=tmp, timeout=300)
    wheel = next((tmp / "wheel").glob("aerec-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)],
                   check=True, cwd=tmp, timeout=300)
    return tmp


def test_the_wheel_holds_the_templates_and_the_python_models(installed):
    names = set(zipfile.ZipFile(next((installed / "wheel").glob("aerec-*.whl"))).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "builder" / "config_templates").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {"builder/config_templates/ranker_onnx.pbtxt", "builder/config_templates/python_models/preprocess.py",
            "builder/config_templates/python_models/recommend_fused.py"} <= shipped
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"


def test_an_installed_aerec_builds_a_repository_outside_the_checkout(installed, tmp_path):
    dataset = load_dataset(str(FIXTURES / "six_movies" / "ratings.dat"), "random", 0)
    run, _ = train_and_export(dataset, tmp_path / "run",
                              TrainConfig(model="sae", hidden=[8, 4], epochs=1, batch_size=64, device="cpu"))
    site, out, work = installed / "site", tmp_path / "repo", tmp_path / "elsewhere"
    work.mkdir()
    # The installed copy's own files, `aerec repository` through its CLI; prints where it all came from.
    script = ("import sys, builder, serving\n"
              "from builder import templates\n"
              "print(builder.__file__, serving.__file__, templates.TEMPLATES,\n"
              "      templates.python_model('fused'), sep='\\n')\n"
              "from cli.main import main\n"
              f"sys.argv = ['aerec', 'repository', {str(run)!r}, '--out', {str(out)!r}]\n"
              "main()\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    located = done.stdout.splitlines()[:4]
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in located), located
    for model in ("preprocess", "postprocess", "recommend", "rater_onnx"):   # sae: a rating model
        assert (out / model / "config.pbtxt").is_file()
    assert (out / "preprocess" / "1" / "model.py").read_bytes() == (
        site / "builder" / "config_templates" / "python_models" / "preprocess.py").read_bytes()
    assert (out / "preprocess" / "1" / "serving" / "requests.py").is_file()
    assert (out / "rater_onnx" / "1" / "model.onnx").is_file()
