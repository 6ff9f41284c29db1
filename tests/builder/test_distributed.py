"""Data-parallel training under torchrun (2 CPU ranks, gloo) against one process on ML-100K u1:
the same test RMSE and recall@10, only rank 0 writes the run folder, the same seed twice gives
the same run, EASE's all-reduced Gram matrix is the single-process one, and a 2-rank run killed
mid-way and resumed ends where an uninterrupted one does."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file

from builder import distributed
from builder.config import TrainConfig
from builder.data.synthetic import synthetic_csr_rows
from builder.models.ease import EASE, fit_ease, gram
from builder.train import train
from conftest import shared_run
from server.launcher import free_port

AEREC = str(Path(sys.executable).parent / "aerec")
RATER = ["--model", "autorec-i", "--hidden", "64", "--epochs", "3", "--batch-size", "256", "--set", "l2=1.0",
         "--device", "cpu", "--quiet"]
TIMINGS = {"train_seconds", "seconds_to_best"}

# Runs `aerec train` as one torchrun worker, recording every file this rank opens for writing
# (Python's audit hooks see open() and os.replace, whichever library calls them).
WORKER = """
import json, os, sys
writes = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and args[1] and set(str(args[1])) & set("wax+"):
        writes.append(str(args[0]))
    elif event == "os.replace":
        writes.append(str(args[1]))
sys.addaudithook(hook)
log = sys.argv.pop(1)
from cli.main import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    with open(os.path.join(log, "rank%s.json" % os.environ["RANK"]), "w") as f:
        json.dump(writes, f)
"""


def _torchrun(args: list[str], nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run` with a rendezvous on a free loopback port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _aerec(out: Path, *options: str) -> dict:
    done = subprocess.run([AEREC, "train", *options, "--out", str(out)], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    if "--quiet" in options:   # torchrun's own banner too ("Setting OMP_NUM_THREADS ...")
        assert "OMP_NUM_THREADS" not in done.stdout + done.stderr
    return json.loads((out / "metrics.json").read_text())


def _metrics(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k not in TIMINGS}


# -- in-process: the helpers with one process ---------------------------------------------------

def test_one_process_is_the_identity():
    w = distributed.world()
    assert (w.rank, w.size, w.main, w.parallel) == (0, 1, True, False)
    batch = np.arange(7)
    assert np.array_equal(distributed.batch_part(batch, w), batch)
    assert np.array_equal(distributed.all_sum([1.5, 2]), [1.5, 2.0])
    assert distributed.gather({"a": 1}) == [{"a": 1}]


def test_batch_parts_and_shards_cover_every_row_once():
    batch = np.arange(10, 17)
    parts = [distributed.batch_part(batch, distributed.World(r, 3)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]  # about batch / world rows each
    assert sorted(np.concatenate(parts)) == list(batch)
    blocks = [distributed.shard_range(10, distributed.World(r, 4)) for r in range(4)]
    assert blocks == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_torchrun_world_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.env_world() == distributed.World(1, 2, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK 2 outside"):
        distributed.env_world()
    cmd = distributed.torchrun_command(2, "cli.main", ["train", "--out", "x"])
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    with pytest.raises(ValueError, match="--nproc must be >= 1"):
        distributed.torchrun_command(0, "cli.main", [])


def test_ease_gram_of_user_shards_sums_to_the_whole(u1):
    X = (u1.train > 0).astype(np.float64).tocsr()
    halves = [X[:400], X[400:]]
    assert np.array_equal(gram(halves[0]) + gram(halves[1]), gram(X))  # integer counts: exact
    # EASE.fit on one shard with the other's Gram added, as the all-reduce adds it
    sharded = EASE(X.shape[1]).fit(u1.train[:400], 500.0, reduce=lambda G: G + gram(halves[1]))
    assert np.allclose(sharded.B.numpy(), fit_ease(X, 500.0), atol=1e-6)


def test_ease_all_reduce_in_a_real_process_group_of_one(u1, tmp_path):
    """The collective itself (gloo, world size 1): the reduced Gram is the local one."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        G = gram((u1.train > 0).astype(np.float64))
        t = torch.from_numpy(G.copy())
        dist.all_reduce(t)
        assert np.array_equal(t.numpy(), G)
    finally:
        dist.destroy_process_group()


def test_synthetic_shards_are_rows_of_the_whole():
    whole = synthetic_csr_rows(3000, 500, 60_000, seed=4, chunk=1024)
    parts = [synthetic_csr_rows(3000, 500, 60_000, a, b, seed=4, chunk=1024) for a, b in ((0, 2048), (2048, 3000))]
    stacked = sp.vstack(parts).tocsr()
    assert (stacked != whole).nnz == 0 and whole.nnz > 55_000
    assert whole.data.min() >= 1 and whole.data.max() <= 5 and whole.has_sorted_indices
    with pytest.raises(ValueError, match="multiples of chunk"):
        synthetic_csr_rows(3000, 500, 60_000, 100, 3000, chunk=1024)


def test_netflix_size_teacher_is_refused_naming_what_to_train_instead(u1):
    """A distillation teacher's predictions are dense: at Netflix size the run is refused before
    any training, and the message names the undistilled recipe."""
    import dataclasses

    from builder.train import teacher_predictions
    netflix = sp.csr_matrix((480_189, 17_770), dtype=np.float32)
    config = TrainConfig(model="deeprec", teacher="autorec-i", distill=3.0, device="cpu")
    with pytest.raises(ValueError, match="480,189 x 17,770.*--preset deeprec-plain"):
        teacher_predictions(config, dataclasses.replace(u1, train=netflix), netflix)


# -- two ranks under torchrun ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_rank_rater(tmp_path_factory):
    """autorec-i trained by 2 ranks; every file each rank opened for writing."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "worker.py").write_text(WORKER)
    (root / "log").mkdir()
    _torchrun([str(root / "worker.py"), str(root / "log"), "train", *RATER, "--out", str(root / "run")])
    writes = {r: json.loads((root / "log" / f"rank{r}.json").read_text()) for r in (0, 1)}
    return root / "run", writes


@pytest.mark.slow
def test_two_ranks_match_one_process_and_only_rank_0_writes(two_rank_rater, u1):
    out, writes = two_rank_rater
    config = TrainConfig(model="autorec-i", hidden=[64], epochs=3, batch_size=256, l2=1.0, device="cpu")
    single = train(config, u1, progress=False).metrics
    ddp = json.loads((out / "metrics.json").read_text())
    assert abs(ddp["test_rmse"] - single["test_rmse"]) < 0.005
    assert abs(ddp["val_rmse"] - single["val_rmse"]) < 0.005
    assert [p for p in writes[1] if str(out) in p] == []  # rank 1 wrote nothing into the run folder
    written = {Path(p).name for p in writes[0] if str(out) in p}
    assert {"config.json", "metrics.json", "history.json", "train_data.npy"} <= written


@pytest.mark.slow
def test_same_seed_twice_gives_the_same_run(two_rank_rater, tmp_path):
    """The second run through `aerec train --nproc 2` (torchrun --standalone)."""
    again = tmp_path / "again"
    _aerec(again, *RATER, "--nproc", "2")
    assert _metrics(again) == _metrics(two_rank_rater[0])
    a, b = (load_file(str(p / "weights.safetensors")) for p in (again, two_rank_rater[0]))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_rank_ease_equals_one_process(u1, tmp_path):
    ddp = _aerec(tmp_path / "ease", "--model", "ease", "--device", "cpu", "--quiet", "--nproc", "2")
    _, single = shared_run(u1, TrainConfig(model="ease", device="cpu"))   # one process: the session's EASE run
    assert abs(ddp["recall@10"] - single.metrics["recall@10"]) < 0.005
    assert ddp["val_recall@10"] == pytest.approx(single.metrics["val_recall@10"], abs=1e-9)
    B = load_file(str(tmp_path / "ease" / "weights.safetensors"))["B"]
    assert torch.allclose(B, single.model.B, atol=1e-5)  # from the all-reduced Gram


# Dropout, input corruption and a refit: every rank's random streams matter.
RESUMED = ["--model", "deeprec", "--hidden", "64", "--epochs", "4", "--dropout", "0.3", "--device", "cpu",
           "--set", "corruption=0.2", "--set", "refit=true", "--batch-size", "128", "--quiet",
           "--checkpoint-every", "0", "--nproc", "2"]


def _checkpoint_position(path: Path):
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return raw["phase"], raw["epoch"]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own, so
    killing the launcher's process group would leave them running)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the workers, then the launcher: a machine failing mid-epoch."""
    for pid in _descendants(proc.pid) + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


@pytest.mark.slow
def test_two_rank_resume_ends_like_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    _aerec(whole, *RESUMED)
    out = tmp_path / "cut"
    # Kill the whole job (launcher and both ranks) once the selection phase has 2 epochs saved.
    proc = subprocess.Popen([AEREC, "train", *RESUMED, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, pos = time.monotonic() + 180, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            pos = _checkpoint_position(out / "checkpoint.pt") if (out / "checkpoint.pt").is_file() else None
            if pos and (pos[0] == "refit" or pos[1] >= 2):
                break
            time.sleep(0.01)
    finally:
        _kill_job(proc)
    assert pos is not None and not (out / "metrics.json").exists(), "the job ended before it could be cut"
    _aerec(out, *RESUMED, "--resume")
    assert _metrics(out) == _metrics(whole)
    a, b = (load_file(str(p / "weights.safetensors")) for p in (out, whole))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "checkpoint.pt").exists()
