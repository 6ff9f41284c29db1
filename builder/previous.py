"""Two versions side by side: the newest build behind `recommend`, the one before behind
`recommend_previous` (docs/serving.md, "Two versions side by side").

A build with `keep_previous` (`aerec repository RUN --keep-previous`) into a repository that
already serves a pipeline keeps that pipeline's versions loaded and callable:

- every model either pipeline runs (preprocess, the networks, postprocess) gets a
  `version_policy { specific { versions: [...] } }` naming the versions the two pipelines use, so
  Triton loads both (its default policy loads only the newest);
- `recommend_previous` is an ensemble of the previous build's steps, each pinned to the previous
  build's version (`model_version: N-1` per step; `recommend`'s steps keep -1, the newest). It
  takes and answers exactly what `recommend` does.

A build without it serves the newest version alone, as before, and removes `recommend_previous`.
The pipeline's version is that of the network that ranks its lists (the ranker, or the rater
served alone); each build writes it into its postprocess version (`served.json`), which labels
the recommendation metrics (serving/metrics.py) with it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving import contract
from serving.metrics import SERVED_FILE   # in each postprocess version: its pipeline's networks, version

PREVIOUS = "recommend_previous"   # the pipeline serving the previous build
STEPS = ("preprocess", "postprocess")


class PreviousError(ValueError):
    pass


def pipeline_models(manifest: dict) -> dict[str, int]:
    """{model name: version} of the models the manifest's build made its pipeline of: its
    preprocess, postprocess and served networks (ranker, rater), at the versions it wrote."""
    written = manifest.get("models", {})
    names = [*STEPS, *(manifest.get(role) for role in ("ranker", "rater"))]
    return {name: int(written[name]) for name in names if name and name in written}


def ranking_network(manifest: dict) -> str | None:
    """The network that orders the lists: the ranker, else the rater served alone."""
    return manifest.get("ranker") or manifest.get("rater")


def served(manifest: dict) -> dict:
    """What one build's pipeline serves, as written into its postprocess version: the networks'
    names and versions and `version`, the ranking network's (the pipeline's version)."""
    models = pipeline_models(manifest)
    ranking = ranking_network(manifest)
    return {"ranker": manifest.get("ranker"), "rater": manifest.get("rater"),
            "networks": {n: v for n, v in models.items() if n not in STEPS},
            "version": models.get(ranking)}


def _id_types(vdir: Path) -> tuple[str, str]:
    """(users', items') id types of one preprocess version (its user_ids.npy / item_ids.npy)."""
    load = lambda name: np.load(vdir / name, mmap_mode="r", allow_pickle=False)  # noqa: E731
    if not (vdir / "item_ids.npy").is_file():
        return contract.INT_ID, contract.INT_ID
    return contract.id_type(load("user_ids.npy")), contract.id_type(load("item_ids.npy"))


def previous_ensemble(repo: Path, old: dict, ensemble_config) -> model_config_pb2.ModelConfig:
    """`recommend_previous`: the ensemble (`ensemble_config(ranker, rater, ids)`, builder.repository's)
    of `old`'s (the previous build's manifest) networks, every step pinned to the version that
    build wrote."""
    versions = pipeline_models(old)
    ids = _id_types(Path(repo) / "preprocess" / str(versions["preprocess"]))
    config = ensemble_config(old.get("ranker"), old.get("rater"), ids)
    config.name = PREVIOUS
    for step in config.ensemble_scheduling.step:
        step.model_version = versions[step.model_name]
    return config


def set_policies(repo: Path, versions: dict[str, list[int]]) -> None:
    """Each named model's config gets `version_policy { specific { versions } }` (the configs
    are parsed and written back; other fields are kept)."""
    for name, wanted in versions.items():
        path = Path(repo) / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        config.version_policy.specific.versions[:] = sorted(set(wanted))
        path.write_text(text_format.MessageToString(config))


def arrange(tmp: Path, old: dict, manifest: dict, keep_previous: bool, ensemble_config) -> dict | None:
    """After a build into `tmp` (the repository being assembled): record the new pipeline's
    version in its postprocess version and, with `keep_previous`, serve the previous build
    (`old`, its manifest) beside it. Returns the manifest's "previous" entry ({"pipeline",
    "models": {name: version}, "policies": {name: [versions]}}) or None. Without
    `keep_previous` an earlier `recommend_previous` is removed. `ensemble_config`: the function
    that writes the ensemble (builder.repository.ensemble_config). Raises PreviousError when
    there is no previous pipeline to keep."""
    tmp = Path(tmp)
    now = pipeline_models(manifest)
    if "postprocess" in now and manifest.get("models", {}).get("postprocess"):
        text = json.dumps(served(manifest))
        (tmp / "postprocess" / str(now["postprocess"]) / SERVED_FILE).write_text(text)
        fused = tmp / "recommend" / str(manifest["models"].get("recommend"))
        if (fused / "model.py").is_file():   # the fused pipeline counts its answers too
            (fused / SERVED_FILE).write_text(text)
    if not keep_previous:
        shutil.rmtree(tmp / PREVIOUS, ignore_errors=True)
        return None
    before = pipeline_models(old)
    if not ranking_network(old) or not all(s in before for s in STEPS) or not ranking_network(manifest):
        raise PreviousError("--keep-previous keeps the pipeline the repository served before this build; "
                            "this repository serves none yet (build once without it first), or this build "
                            "serves no pipeline")
    policies: dict[str, list[int]] = {}
    for models in (now, before):
        for name, version in models.items():
            policies.setdefault(name, []).append(version)
    set_policies(tmp, policies)
    folder = tmp / PREVIOUS
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "1").mkdir(parents=True)   # an ensemble's version: an empty folder
    (folder / "config.pbtxt").write_text(text_format.MessageToString(previous_ensemble(tmp, old, ensemble_config)))
    return {"pipeline": PREVIOUS, "models": before, "policies": {n: sorted(set(v)) for n, v in policies.items()}}
