"""`aerec batch` on ML-100K u1: the lists are the ones `aerec evaluate` ranks, a resumed job writes
the same bytes, every format holds the same rows, ids keep their kind, and bad inputs are named."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from builder.batch import BatchError, batch_recommend, evaluate_recommendations, manifest_path, parts_dir
from builder.data.synthetic import synthetic_log, write_log
from builder.run_folder import load_run_dataset
from builder.stages import evaluate_run, train_run
from conftest import aerec, cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rater(tmp_path_factory):
    """I-AutoRec (a rating model, item-based: every user predicted at once) on the same data and
    split, five epochs: under a second."""
    out = tmp_path_factory.mktemp("runs") / "autorec-i"
    train_run({"model": "autorec-i", "hidden": [64], "epochs": 5, "device": "cpu"}, out, progress=False)
    return out


def test_batch_file_scores_as_evaluate_does(ease, tmp_path):
    out = tmp_path / "recs.parquet"
    manifest = batch_recommend(ease, out, chunk_size=300, progress=False)
    recs = pd.read_parquet(out)
    d = load_run_dataset(ease)
    assert manifest["users"] == d.n_users == recs["user_id"].nunique()
    assert manifest["rows"] == len(recs) == 10 * d.n_users
    assert list(recs.columns) == manifest["columns"] == ["user_id", "rank", "item_id", "score", "title"]
    assert recs.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 11))).all()
    # No recommended item is one the user rated in training.
    rows, cols = d.user_index(recs["user_id"].to_numpy()), d.item_index(recs["item_id"].to_numpy())
    assert (np.asarray(d.train[rows, cols]).ravel() == 0).all()
    # Scores fall along the ranks within each user.
    assert (recs.groupby("user_id")["score"].diff().dropna() <= 0).all()
    assert not parts_dir(out).exists() and json.loads(manifest_path(out).read_text())["rows"] == len(recs)

    offline = evaluate_run(ease)
    from_file = evaluate_recommendations(out, ease)
    for key in ("recall@10", "ndcg@10", "coverage@10", "popularity_recall@10", "popularity_ndcg@10",
                "lift_recall@10"):
        assert from_file[key] == offline[key], key
    assert from_file["test_users"] == offline["test_users"] and from_file["test_users_missing"] == 0
    # Through the CLI as well, printed at 4 decimals.
    shown = cli("evaluate", "--recommendations", out, "--run", ease)
    assert shown.returncode == 0, shown.stderr
    assert f"{offline['recall@10']:.4f}" in shown.stdout and f"{offline['ndcg@10']:.4f}" in shown.stdout


def test_killed_job_resumes_to_the_same_bytes(ease, tmp_path):
    whole = tmp_path / "whole.parquet"
    batch_recommend(ease, whole, chunk_size=200, progress=False)

    class Killed(Exception):
        pass

    def die_after_two(index, path):
        if index == 1:
            raise Killed

    out = tmp_path / "resumed.parquet"
    with pytest.raises(Killed):
        batch_recommend(ease, out, chunk_size=200, progress=False, on_part=die_after_two)
    parts = sorted(p.name for p in parts_dir(out).glob("part-*.parquet"))
    assert parts == ["part-000000.parquet", "part-000001.parquet"] and not out.exists()
    with pytest.raises(BatchError, match="exists: an interrupted job. Add --resume"):
        batch_recommend(ease, out, chunk_size=200, progress=False)
    with pytest.raises(BatchError, match="parts of another job"):
        batch_recommend(ease, out, chunk_size=100, progress=False, resume=True)
    written = []
    batch_recommend(ease, out, chunk_size=200, progress=False, resume=True,
                    on_part=lambda i, p: written.append(i))
    assert written == [2, 3, 4]    # 943 users in chunks of 200: the first two were kept
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.slow  # three CLI processes, 189 parts each: 10-25 s
def test_killed_process_resumes_through_the_cli(ease, tmp_path):
    """A real process killed once its first parts exist; `--resume` finishes the same file."""
    whole, out = tmp_path / "whole.csv", tmp_path / "resumed.csv"
    assert aerec("batch", ease, "--out", whole, "--chunk-size", 5, "--quiet").returncode == 0
    args = [sys.executable, "-m", "cli.main", "batch", str(ease), "--out", str(out), "--chunk-size", "5", "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    parts = parts_dir(out)
    while proc.poll() is None and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    if out.exists():   # the process finished before the kill landed: nothing to resume
        pytest.skip("the job finished before it could be killed")
    again = aerec("batch", ease, "--out", out, "--chunk-size", 5, "--quiet", "--resume")
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == whole.read_bytes()


def test_csv_and_jsonl_hold_the_parquet_rows(ease, tmp_path):
    frames = {}
    for suffix in ("parquet", "csv", "jsonl"):
        batch_recommend(ease, tmp_path / f"recs.{suffix}", top_k=5, chunk_size=400, progress=False)
        frames[suffix] = pd.read_parquet(tmp_path / "recs.parquet") if suffix == "parquet" else None
    csv = pd.read_csv(tmp_path / "recs.csv", keep_default_na=False)
    jsonl = pd.read_json(tmp_path / "recs.jsonl", lines=True)
    want = frames["parquet"]
    for got in (csv, jsonl):
        assert list(got.columns) == list(want.columns) and len(got) == len(want) == 5 * 943
        for col in ("user_id", "rank", "item_id", "title"):
            assert got[col].tolist() == want[col].tolist(), col
        np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-6)
    # Each file scores alike.
    scores = [evaluate_recommendations(tmp_path / f"recs.{s}", ease) for s in ("parquet", "csv", "jsonl")]
    assert scores[0] == scores[1] == scores[2]


@pytest.mark.slow  # trains I-AutoRec for five epochs: 5-20 s
def test_rating_model_adds_predicted_ratings(ease, rater, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("5\n1\n\n943\n")
    out = tmp_path / "recs.parquet"
    m = batch_recommend(ease, out, users_file=users, rating_run=rater, progress=False)
    recs = pd.read_parquet(out)
    assert m["columns"] == ["user_id", "rank", "item_id", "score", "predicted_rating", "title"]
    assert recs["user_id"].drop_duplicates().tolist() == [5, 1, 943]     # the file's order
    assert recs["predicted_rating"].between(1, 5).all() and recs["predicted_rating"].nunique() > 1
    # The rater's own prediction at each listed item, clipped to the scale.
    from builder.evaluate import predict_user_matrix
    from builder.run_folder import load_run
    config, model = load_run(rater)
    d = load_run_dataset(rater)
    pred = predict_user_matrix(model, d, config, "cpu", d.user_index(recs["user_id"].to_numpy()))
    at = pred[np.arange(len(recs)), d.item_index(recs["item_id"].to_numpy())]
    np.testing.assert_array_equal(recs["predicted_rating"].to_numpy(), np.clip(at, 1, 5).astype(np.float32))


@pytest.mark.slow  # trains I-AutoRec (the rater fixture)
def test_an_item_based_model_ranks_as_evaluate_does(rater, tmp_path):
    """I-AutoRec predicts every user in one pass over the items; chunks slice it."""
    out = tmp_path / "recs.parquet"
    batch_recommend(rater, out, chunk_size=100, progress=False)
    offline, from_file = evaluate_run(rater), evaluate_recommendations(out, rater)
    assert [from_file[k] for k in ("recall@10", "ndcg@10", "coverage@10")] == \
        [offline[k] for k in ("recall@10", "ndcg@10", "coverage@10")]


def test_string_ids_come_out_as_strings(tmp_path):
    log = tmp_path / "events.csv"
    write_log(synthetic_log(300, 120, 6000, seed=3), log)
    run = tmp_path / "run"
    train_run({"model": "ease", "ease_lambda": 50.0, "data": str(log), "split": "per-user", "device": "cpu"},
              run, progress=False)
    for suffix in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"recs.{suffix}"
        m = batch_recommend(run, out, progress=False)
        assert "title" not in m["columns"]    # a log has no titles: the ids themselves would repeat
        frame = pd.read_parquet(out) if suffix == "parquet" else None
        if suffix == "parquet":
            assert frame["user_id"].map(type).eq(str).all() and frame["item_id"].str.startswith("sku-").all()
            assert frame["item_id"].str.len().eq(10).all()    # zero-padded: "sku-000042", never an integer
    csv = pd.read_csv(tmp_path / "recs.csv", dtype={"user_id": str, "item_id": str})
    assert csv["item_id"].tolist() == pd.read_parquet(tmp_path / "recs.parquet")["item_id"].tolist()
    first = json.loads((tmp_path / "recs.jsonl").read_text().splitlines()[0])
    assert isinstance(first["user_id"], str) and isinstance(first["item_id"], str)
    assert evaluate_recommendations(tmp_path / "recs.csv", run)["recall@10"] == evaluate_run(run)["recall@10"]


@pytest.mark.parametrize("args,message", [
    (["--users", "{users}"], "users.txt line 2: user id '99999' is not a user of this run (943 users)"),
    (["--users", "{letters}"], "letters.txt line 1: user id 'abc' is not an integer"),
    (["--out", "{tmp}/recs.xlsx"], "unknown output suffix '.xlsx'; use one of .parquet, .csv, .jsonl"),
    (["--top-k", "0"], "--top-k and --chunk-size must be >= 1"),
    # As the server refuses TOP_K outside the catalogue: a longer list could only be cut short.
    (["-k", "1683"], "--top-k must be in 1..1682 (the catalogue's items), got 1683"),
    (["--top-k", "100000"], "--top-k must be in 1..1682 (the catalogue's items), got 100000"),
    (["--rating-model", "{ease}"], "ease ranks, it predicts no ratings"),
])
def test_bad_inputs_are_named(ease, tmp_path, args, message):
    (tmp_path / "users.txt").write_text("1\n99999\n")
    (tmp_path / "letters.txt").write_text("abc\n")
    fill = {"users": tmp_path / "users.txt", "letters": tmp_path / "letters.txt", "tmp": tmp_path, "ease": ease}
    args = [a.format(**fill) for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "recs.parquet"]
    r = cli("batch", ease, *out, *args, "--quiet")
    assert r.returncode == 2
    assert message in " ".join(r.stderr.split())
    assert not (tmp_path / "recs.parquet").exists() and not parts_dir(tmp_path / "recs.parquet").exists()


def test_k_is_top_ks_short_form(ease, tmp_path):
    (tmp_path / "users.txt").write_text("1\n2\n")
    r = cli("batch", ease, "--out", tmp_path / "recs.csv", "--users", tmp_path / "users.txt", "-k", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "recs.csv").groupby("user_id")["rank"].max().tolist() == [3, 3]


def test_a_file_without_its_columns_is_refused(ease, tmp_path):
    bad = tmp_path / "other.csv"
    bad.write_text("user,item\n1,2\n")
    r = cli("evaluate", "--recommendations", bad, "--run", ease)
    assert r.returncode == 2 and "no user_id, item_id, rank column(s)" in " ".join(r.stderr.split())


def test_a_foreign_file_is_scored_by_hand_computed_rules(ease, tmp_path):
    """Another system's CSV: two test users listed (one with an unknown item and a gap), the
    rest missing (empty lists), a user the run does not know. recall@2 by hand."""
    from builder.config import TrainConfig
    from builder.evaluate import liked
    d = load_run_dataset(ease)
    relevant = liked(d.test, TrainConfig.load(ease / "config.json").relevant_threshold)
    test = np.flatnonzero(np.diff(relevant.indptr) > 0)
    a, b = test[0], test[1]
    hit_a = relevant.indices[relevant.indptr[a]]                  # one of a's relevant items
    miss_b = np.setdiff1d(np.arange(d.n_items), relevant.indices[relevant.indptr[b]:relevant.indptr[b + 1]])[0]
    rows = [(d.user_ids[a], 1, 999999), (d.user_ids[a], 2, d.item_ids[hit_a]),
            (d.user_ids[b], 1, d.item_ids[miss_b]), ("99999", 1, d.item_ids[0])]
    f = tmp_path / "foreign.csv"
    f.write_text("user_id,item_id,rank,extra\n" + "".join(f"{u},{i},{r},x\n" for u, r, i in rows))
    got = evaluate_recommendations(f, ease)
    n_rel = lambda u: relevant.indptr[u + 1] - relevant.indptr[u]  # noqa: E731
    assert got["recall@2"] == pytest.approx((1 / min(2, n_rel(a))) / len(test))
    assert got["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + (n_rel(a) > 1) / np.log2(3)) / len(test))
    assert got["coverage@2"] == 2 / d.n_items
    assert got["test_users"] == len(test) and got["test_users_missing"] == len(test) - 2
    assert got["unknown_users"] == 1 and got["unknown_items"] == 1
    assert "recall@10" not in got    # the file ranks two deep: no figure beyond it
    f.write_text(f"user_id,item_id,rank\n{d.user_ids[a]},sku-1,1\n")   # another catalogue's ids
    with pytest.raises(BatchError, match="item id 'sku-1' is not an integer, and this run's item ids are integers"):
        evaluate_recommendations(f, ease)
