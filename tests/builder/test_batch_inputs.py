"""`aerec batch --histories` and `--exclude-file` / `--include-file` on ML-100K u1: a history is
folded in as the served `recommend` folds ITEM_IDS/RATINGS in (a run user's ratings under a new
id get that user's list), unknown ids are counted, rules keep lists K long from the next-best
allowed items, and the Ray engine writes the local engine's rows."""

import json

import numpy as np
import pandas as pd
import pytest

from builder.batch import BatchError, batch_recommend
from builder.run_folder import load_run_dataset
from builder.stages import train_run
from conftest import cli

NEW = 100_000   # added to a run user's id: an id the run never saw


@pytest.fixture(scope="module")
def histories(ease, tmp_path_factory):
    """(file, run users): every 25th run user's training ratings under id + NEW, plus two rows of
    items the catalogue lacks (one for a user that has known items, one for a user with no other)."""
    d = load_run_dataset(ease)
    users = np.arange(0, d.n_users, 25)
    m = d.train[users].tocoo()
    frame = pd.DataFrame({"user_id": d.user_ids[users][m.row] + NEW, "item_id": d.item_ids[m.col],
                          "rating": m.data.astype(int)})
    extra = pd.DataFrame({"user_id": [d.user_ids[users[0]] + NEW, 999_999], "item_id": [88_888, 77_777],
                          "rating": [4, 3]})
    path = tmp_path_factory.mktemp("hist") / "histories.csv"
    pd.concat([frame, extra]).sample(frac=1, random_state=0).to_csv(path, index=False)   # any row order
    return path, users


def test_a_history_under_a_new_id_gets_the_run_users_list(ease, histories, tmp_path):
    path, users = histories
    d = load_run_dataset(ease)
    batch_recommend(ease, tmp_path / "all.parquet", progress=False)
    m = batch_recommend(ease, tmp_path / "new.parquet", histories=path, chunk_size=7, progress=False)
    assert m["history_users"] == m["users"] == len(users)
    assert m["history_unknown_items"] == 2 and m["history_users_without_known_items"] == 1
    assert m["history_known_users"] == 0
    got = pd.read_parquet(tmp_path / "new.parquet")
    want = pd.read_parquet(tmp_path / "all.parquet")
    want = want[want["user_id"].isin(d.user_ids[users])].reset_index(drop=True)
    got["user_id"] -= NEW
    pd.testing.assert_frame_equal(got, want)


def test_a_history_without_ratings_counts_as_top_rated(ease, tmp_path):
    """An implicit log (no rating column) on a rating run: each item rated at the scale's top, as
    ITEM_IDS without RATINGS is served; the same list as that history sent with 5 stars."""
    d = load_run_dataset(ease)
    items = d.item_ids[d.train[3].indices]
    pd.DataFrame({"user_id": NEW, "item_id": items}).to_csv(tmp_path / "clicks.csv", index=False)
    pd.DataFrame({"user_id": NEW, "item_id": items, "rating": 5}).to_csv(tmp_path / "fives.csv", index=False)
    batch_recommend(ease, tmp_path / "a.parquet", histories=tmp_path / "clicks.csv", progress=False)
    batch_recommend(ease, tmp_path / "b.parquet", histories=tmp_path / "fives.csv", progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet"))


def test_rules_fill_the_list_from_the_next_best_allowed_items(ease, tmp_path):
    d = load_run_dataset(ease)
    batch_recommend(ease, tmp_path / "wide.parquet", top_k=40, progress=False)
    wide = pd.read_parquet(tmp_path / "wide.parquet")
    banned = wide.loc[wide["rank"] <= 2, "item_id"].value_counts().index[:3].tolist()   # often at the top
    alone = int(d.user_ids[7])
    its_first = int(wide.loc[(wide["user_id"] == alone) & (wide["rank"] == 1), "item_id"].iloc[0])
    (tmp_path / "exclude.txt").write_text("\n".join(map(str, banned)) + f"\n{alone},{its_first}\n424242\n")
    allowed = set(d.item_ids[: d.n_items // 2].tolist())
    (tmp_path / "include.txt").write_text("\n".join(map(str, sorted(allowed))) + "\n")
    m = batch_recommend(ease, tmp_path / "ruled.parquet", exclude_file=tmp_path / "exclude.txt",
                        include_file=tmp_path / "include.txt", progress=False)
    assert m["rules_unknown_items"] == 1 and m["rules_unknown_users"] == 0
    got = pd.read_parquet(tmp_path / "ruled.parquet")
    assert len(got) == 10 * d.n_users                      # every list still K long
    # Each user's list: its 40-long list without the excluded items, the included ones only.
    out = wide[~wide["item_id"].isin(banned) & wide["item_id"].isin(allowed)]
    out = out[~((out["user_id"] == alone) & (out["item_id"] == its_first))]
    full = out.groupby("user_id")["rank"].transform("size") >= 10
    assert full.groupby(out["user_id"]).all().all()        # 40 was enough for every user here
    want = out.groupby("user_id").head(10)
    assert got.groupby("user_id")["item_id"].apply(list).equals(want.groupby("user_id")["item_id"].apply(list))
    assert (got.groupby("user_id")["score"].apply(list) == want.groupby("user_id")["score"].apply(list)).all()
    # The per-user line keeps the item from that user only.
    assert not ((got["user_id"] == alone) & (got["item_id"] == its_first)).any()


def test_cli_options_and_refusals(ease, histories, tmp_path):
    path, users = histories
    shown = cli("batch", ease, "--out", tmp_path / "h.jsonl", "--histories", path)
    assert shown.returncode == 0, shown.stderr
    assert "history_unknown_items=2" in shown.stdout and "history_users_without_known_items=1" in shown.stdout
    assert len(pd.read_json(tmp_path / "h.jsonl", lines=True)) == 10 * len(users)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    both = cli("batch", ease, "--out", tmp_path / "x.parquet", "--histories", path, "--users", ids)
    assert both.returncode == 2 and "--users and --histories" in both.stderr
    missing = cli("batch", ease, "--out", tmp_path / "y.parquet", "--exclude-file", tmp_path / "nope.txt")
    assert missing.returncode == 2 and "--exclude-file" in missing.stderr and "not found" in missing.stderr
    (tmp_path / "bad.txt").write_text("1,2,3\n")
    bad = cli("batch", ease, "--out", tmp_path / "z.parquet", "--include-file", tmp_path / "bad.txt")
    assert bad.returncode == 2 and "bad.txt line 1" in bad.stderr


def test_histories_take_the_data_uri_that_names_the_columns(ease, histories, tmp_path):
    """A history file whose header aerec does not recognise (visitor, sku, stars) loads as
    `aerec train --data` loads it: csv:PATH?user=COL&item=COL&rating=COL, the same rows as the
    file with the usual header; the plain path is refused with the URI to give."""
    path, _ = histories
    renamed = tmp_path / "h.csv"
    pd.read_csv(path).rename(columns={"user_id": "visitor", "item_id": "sku", "rating": "stars"}).to_csv(
        renamed, index=False)
    spec = f"csv:{renamed}?user=visitor&item=sku&rating=stars"
    plain = cli("batch", ease, "--out", tmp_path / "plain.csv", "--histories", path)
    named = cli("batch", ease, "--out", tmp_path / "named.csv", "--histories", spec)
    assert plain.returncode == 0 and named.returncode == 0, named.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "named.csv"), pd.read_csv(tmp_path / "plain.csv"))
    manifest = json.loads((tmp_path / "named.csv.manifest.json").read_text())
    assert manifest["histories"] == f"csv:{renamed.resolve()}?user=visitor&item=sku&rating=stars"
    unnamed = cli("batch", ease, "--out", tmp_path / "x.csv", "--histories", renamed)
    assert unnamed.returncode == 2 and f"csv:{renamed}?user=COL" in unnamed.stderr
    missing = cli("batch", ease, "--out", tmp_path / "y.csv", "--histories", f"csv:{tmp_path / 'nope.csv'}?user=v")
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_histories_refused_with_an_item_based_model(tmp_path, histories):
    run = tmp_path / "autorec-i"
    train_run({"model": "autorec-i", "hidden": [16], "epochs": 1, "device": "cpu"}, run, progress=False)
    with pytest.raises(BatchError, match="item-based"):
        batch_recommend(run, tmp_path / "r.parquet", histories=histories[0], progress=False)


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_rows(ease, histories, tmp_path):
    pytest.importorskip("ray")
    from builder.batch_ray import batch_recommend_ray
    path, _ = histories
    (tmp_path / "exclude.txt").write_text("50\n100\n")
    kw = dict(histories=path, exclude_file=tmp_path / "exclude.txt", progress=False)
    batch_recommend(ease, tmp_path / "local.parquet", chunk_size=10, **kw)
    m = batch_recommend_ray(ease, tmp_path / "ray.parquet", chunk_size=10, num_cpus=1, **kw)
    assert m["history_unknown_items"] == 2 and m["engine"] == "ray"
    got, want = pd.read_parquet(tmp_path / "ray.parquet"), pd.read_parquet(tmp_path / "local.parquet")
    for col in ("user_id", "rank", "item_id", "title"):
        assert (got[col].to_numpy() == want[col].to_numpy()).all(), col
    assert np.abs(got["score"].to_numpy() - want["score"].to_numpy()).max() <= 1e-5
