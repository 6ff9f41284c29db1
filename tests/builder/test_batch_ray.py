"""`aerec batch --engine ray` on a real three-node Ray cluster on this machine (a head and two
worker nodes of one CPU each, started by ray.cluster_utils.Cluster as separate raylets): the rows
are the local engine's on ML-100K u1 EASE, and a worker node killed while its actor is ranking
leaves a job that still ends with every user exactly once."""
import threading
import time

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'aerec[batch]'")
from ray.cluster_utils import Cluster  # noqa: E402

from builder.batch import batch_recommend  # noqa: E402
from builder.batch_ray import batch_recommend_ray  # noqa: E402
from conftest import aerec  # noqa: E402

pytestmark = pytest.mark.slow   # a three-node cluster and an ONNX export: about a minute a test


@pytest.fixture(scope="module")
def local(ease, tmp_path_factory):
    """The local engine's file (PyTorch), the reference."""
    out = tmp_path_factory.mktemp("local") / "recs.parquet"
    batch_recommend(ease, out, chunk_size=200, progress=False)
    return pd.read_parquet(out)


@pytest.fixture
def cluster():
    """A head with no CPUs (it schedules: every actor then ranks on a worker node, the one a test
    can kill) and two worker nodes of one CPU each; shut down even when the test fails."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Ids, ranks and titles equal; scores within 1e-5 (ONNX Runtime vs PyTorch summation order)."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in ("user_id", "rank", "item_id", "title"):
        assert (got[col].to_numpy() == want[col].to_numpy()).all(), col
    assert np.abs(got["score"].to_numpy() - want["score"].to_numpy()).max() <= 1e-5


def test_cluster_rows_are_the_local_engines(ease, local, cluster, tmp_path):
    c, _ = cluster
    out = tmp_path / "recs.parquet"
    m = batch_recommend_ray(ease, out, chunk_size=100, address=c.address, progress=False)
    assert m["engine"] == "ray" and m["ray_nodes"] == 3 and m["ray_cpus"] == 2
    assert m["rows"] == len(local) and m["users"] == local["user_id"].nunique()
    assert (ease / "export" / "model_fp32.onnx").is_file()   # exported, as `aerec export` does
    assert_same_rows(pd.read_parquet(out), local)            # row for row, in the same order
    assert not (tmp_path / "recs.parquet.parts").exists()
    # Through the CLI, joining the same cluster, into a folder of Ray's part files.
    shown = aerec("batch", ease, "--out", tmp_path / "recs", "--engine", "ray", "--address", c.address, "--quiet")
    assert shown.returncode == 0, shown.stderr
    order = ["user_id", "rank"]
    assert_same_rows(pd.read_parquet(tmp_path / "recs").sort_values(order, ignore_index=True), local)
    refused = aerec("batch", ease, "--out", tmp_path / "r.parquet", "--engine", "ray", "--resume")
    assert refused.returncode == 2 and "--engine ray takes no --rating-model, --resume" in refused.stderr


def _alive_rankers() -> list[str]:
    """Node ids (hex) of the live RankShard actors (ray's GCS actor table: no dashboard needed)."""
    from ray._private import state
    return [a["Address"]["NodeID"] for a in state.actors(actor_state_name="ALIVE").values()
            if "RankShard" in a.get("ActorClassName", "")]


def test_job_survives_a_killed_worker_node(ease, local, cluster, tmp_path):
    c, workers = cluster
    out = tmp_path / "recs"                     # a folder: Ray's part files as written
    killed, errors = [], []

    def kill_a_ranking_worker():
        """Once a RankShard actor runs on a worker node, kill that node's processes (no grace)."""
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if ray.is_initialized():
                    hosts = set(_alive_rankers())
                    victim = next((w for w in workers if w.node_id in hosts), None)
                    if victim is not None:
                        time.sleep(1.0)            # let it take batches first
                        c.remove_node(victim, allow_graceful=False)
                        killed.append(time.monotonic())
                        return
                time.sleep(0.2)
        except Exception as e:                     # surfaced by the test below
            errors.append(e)

    killer = threading.Thread(target=kill_a_ranking_worker, daemon=True)
    killer.start()
    # 48 batches of 20 users, 0.4 s each: long enough to lose a node while actors rank.
    m = batch_recommend_ray(ease, out, chunk_size=20, address=c.address, progress=False, delay=0.4)
    finished = time.monotonic()
    killer.join(timeout=10)
    assert not errors, errors
    assert killed and killed[0] < finished, "no worker node was killed while the job ran"
    assert m["ray_nodes"] == 3    # counted at the start: the job began on three nodes
    got = pd.read_parquet(out)
    assert m["rows"] == len(got) == len(local)
    # Every user exactly once: ten ranks each, no user missing or doubled.
    per_user = got.groupby("user_id")["rank"].apply(sorted)
    assert set(per_user.index) == set(local["user_id"]) and per_user.map(lambda r: r == list(range(1, 11))).all()
    order = ["user_id", "rank"]
    assert_same_rows(got.sort_values(order, ignore_index=True), local.sort_values(order, ignore_index=True))
