"""Where a repository build finds what it copies: the config.pbtxt templates, the Python models'
model.py and the serving package vendored beside them. The one place that locates them.

All of it ships in the installed package (pyproject's package-data: builder/config_templates/),
so `aerec repository` works from an installed aerec as from a checkout; nothing is read from the
checkout's model_repository/, whose committed model.py files are copies of these (a test checks
they are the same bytes). pip installs packages as files, never zipped, so importlib.resources
gives real folders that shutil can copy."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import serving

# The config.pbtxt templates, named by TEMPLATE's values in builder.repository.
TEMPLATES = Path(str(files("builder") / "config_templates"))
# Each Python model's model.py: the two ensemble steps, the fused pipeline and `similar`.
PYTHON_MODELS = TEMPLATES / "python_models"
MODEL_PY = {"preprocess": "preprocess.py", "postprocess": "postprocess.py", "fused": "recommend_fused.py",
            "similar": "similar.py"}
# The numpy-only package each Python model imports, vendored into its version folder.
SERVING = Path(serving.__file__).resolve().parent


def python_model(kind: str) -> Path:
    """The model.py source for `kind` ("preprocess", "postprocess", "fused" or "similar"). Raises KeyError for
    another kind, FileNotFoundError when the installed package lacks it (a broken install)."""
    path = PYTHON_MODELS / MODEL_PY[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the aerec install is incomplete; reinstall it")
    return path
