"""`similar` and the blocklist on a real server (one server, ML-100K u1 EASE): similar items equal
the offline ones (serving/similar.py over the item-item weights B) on gRPC and HTTP (a
Mult-DAE's through its network, in process), Star Wars' neighbours are its sequels, a seed is
never returned, an unknown seed is a 400; a blocklist change under load fails no request and,
once the ranking models reload, no blocked item is returned, by either pipeline or `similar`."""
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from builder.config import TrainConfig
from builder.presets import preset
from builder.repository import Tuning, update_blocklist, write_repository
from client import RecommenderClient, RequestError
from conftest import shared_run, train_and_export
from server.launcher import TritonServer
from serving.contract import ITEM_IDS, SIMILAR, TOP_K
from serving.requests import Catalogue
from serving.similar import answer, item_item_scores, parse_similar, seed_vectors, top_k_similar
from test_serving import onnx_outputs

pytestmark = pytest.mark.slow

STAR_WARS, EMPIRE, JEDI = 50, 172, 181


@pytest.fixture(scope="module")
def ranker(u1, tmp_path_factory):
    run, _ = shared_run(u1, TrainConfig(model="ease", device="cpu"))
    return run


@pytest.fixture(scope="module")
def weights(ranker, u1):
    """EASE's item-item weights B, read from the exported network: its scores for each item alone
    at the scale's top are B's rows (binarise(x) @ B)."""
    session = ort.InferenceSession(str(ranker / "export" / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    eye = np.eye(u1.n_items, dtype=np.float32) * np.float32(u1.scale[1])
    return session.run(None, {session.get_inputs()[0].name: eye})[0]


@pytest.fixture(scope="module")
def served(ranker, tmp_path_factory):
    root = tmp_path_factory.mktemp("similar")
    write_repository(ranker, root / "repo", ["onnx"])
    with TritonServer(root / "repo", build_dir=root / "build") as server:
        yield server, root / "repo"


def offline(weights, ids, seeds, k, exclude=None):
    """The offline list for raw seed ids (and raw excluded ids): (ids, scores) of its real items."""
    cols = [np.searchsorted(ids, seeds)]
    blocked = np.zeros((1, len(ids)), bool)
    if exclude:
        blocked[0, np.searchsorted(ids, exclude)] = True
    scores = item_item_scores(weights, cols)
    top = top_k_similar(scores, cols, blocked, k)[0]
    top = top[top >= 0]
    return ids[top].tolist(), scores[0, top]


def test_the_served_step_equals_the_item_item_weights_for_every_item(served, weights):
    """What the model runs (parse_similar, the ranker's network on the seed vectors, answer), in
    process over the build's own assets, for all 1,682 items one seed each, in the server's
    batches of 64: the pure B function's lists, no seed in its own."""
    _, repo = served
    folder = repo / SIMILAR / "1"
    catalogue = Catalogue.load(folder)
    session = ort.InferenceSession(str(folder / "ranker.onnx"), providers=["CPUExecutionProvider"])
    network = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]  # noqa: E731
    n = catalogue.n_items
    for lo in range(0, n, 64):
        rows = np.arange(lo, min(lo + 64, n))
        request = parse_similar({ITEM_IDS: catalogue.item_ids[rows].reshape(-1, 1),
                                 TOP_K: np.full((len(rows), 1), 10, np.int32)}, catalogue)
        top, scores = answer(request, network, catalogue.high)
        seeds = [np.array([r]) for r in rows]
        expected = top_k_similar(item_item_scores(weights, seeds), seeds, None, 10)
        np.testing.assert_array_equal(top, expected)
        assert not (top == rows[:, None]).any()
        np.testing.assert_allclose(scores, np.take_along_axis(weights[rows], top, axis=1), rtol=1e-5, atol=1e-6)


def test_a_mult_dae_ranker_gets_similar_through_its_network(u1, tmp_path):
    """No B for a Mult-DAE: the build's `similar` step scores the multi-hot seed vector (each
    seed at the scale's top) through the exported network, as the definition says."""
    config = TrainConfig(device="cpu").updated(**{**preset("mult-dae"), "epochs": 1, "refit": False})
    run, _ = train_and_export(u1, tmp_path / "dae", config)
    write_repository(run, tmp_path / "repo", ["onnx"])
    folder = tmp_path / "repo" / SIMILAR / "1"
    catalogue = Catalogue.load(folder)
    session = ort.InferenceSession(str(folder / "ranker.onnx"), providers=["CPUExecutionProvider"])
    network = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]  # noqa: E731
    seeds = np.array([[50, 181], [1, -1], [300, -1]], np.int64)
    request = parse_similar({ITEM_IDS: seeds, TOP_K: np.full((3, 1), 10, np.int32)}, catalogue)
    top, _ = answer(request, network, catalogue.high)
    cols = [np.searchsorted(catalogue.item_ids, row[row >= 0]) for row in seeds]
    scores = onnx_outputs(run, seed_vectors(catalogue.n_items, cols, float(u1.scale[1])))
    np.testing.assert_array_equal(top, top_k_similar(scores, cols, None, 10))


def test_star_wars_neighbours_are_its_sequels(served, u1):
    server, _ = served
    rec = RecommenderClient(server.grpc_url).similar([STAR_WARS], k=5)
    assert rec.n_recommended == 5 and STAR_WARS not in rec.item_ids
    assert {EMPIRE, JEDI} & set(rec.item_ids), rec.titles


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_similar_equals_offline(served, weights, u1, protocol):
    server, _ = served
    client = RecommenderClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol)
    ids = np.asarray(u1.item_ids)
    rng = np.random.default_rng(5 if protocol == "grpc" else 6)
    cases = [([int(i)], None) for i in rng.choice(ids, 25, replace=False)]
    cases += [([STAR_WARS, JEDI], None), ([1, 2, 3, 4], [int(i) for i in rng.choice(ids, 30, replace=False)])]
    for seeds, exclude in cases:
        rec = client.similar(seeds, k=10, exclude=exclude)
        expected, scores = offline(weights, ids, seeds, 10, exclude)
        assert rec.item_ids == expected
        assert not set(seeds) & set(rec.item_ids) and not set(exclude or []) & set(rec.item_ids)
        np.testing.assert_allclose(rec.scores, scores, rtol=1e-5, atol=1e-6)
    rec = client.similar([STAR_WARS], k=10, include=[EMPIRE, JEDI, STAR_WARS, 1, 999_999])
    assert sorted(rec.item_ids) == [1, EMPIRE, JEDI] and rec.unknown_items == 1 and not rec.complete


def test_the_cli_prints_ids_scores_and_titles(served, weights, u1):
    from typer.testing import CliRunner

    from cli.main import app
    server, _ = served
    out = CliRunner().invoke(app, ["similar", "--item", str(STAR_WARS), "--item", str(JEDI), "--top-k", "5",
                                   "--url", server.grpc_url], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    expected, scores = offline(weights, np.asarray(u1.item_ids), [STAR_WARS, JEDI], 5)
    titles = np.asarray(u1.titles)[np.searchsorted(np.asarray(u1.item_ids), expected)]
    for item, score, title in zip(expected, scores, titles):
        assert f"{item}" in out.output and f"{score:.3f}" in out.output and title in out.output
    bad = CliRunner().invoke(app, ["similar", "--item", "999999", "--url", server.grpc_url])
    assert bad.exit_code == 2 and "unknown item 999999" in bad.output


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_unknown_seed_is_a_request_error_naming_it(served, protocol):
    server, _ = served
    client = RecommenderClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol)
    with pytest.raises(RequestError, match="unknown item 999999 in ITEM_IDS"):
        client.similar([STAR_WARS, 999_999])
    assert client.similar([STAR_WARS], k=3).n_recommended == 3   # the server keeps serving


def _load(url, users, stop, outcomes, lock):
    """One client thread: recommend for `users` in turn until `stop`; (start, end, ids or error)."""
    client = RecommenderClient(url, retries=0)
    i = 0
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            got = client.recommend(user_id=users[i % len(users)], k=10).item_ids
        except Exception as e:  # every failure is recorded: the test asserts there is none
            got = e
        with lock:
            outcomes.append((t0, time.monotonic(), got))
        i += 1


def test_a_blocklist_change_under_load_fails_nothing_and_blocks_after_the_reload(served, ranker, u1):
    server, repo = served
    users = np.asarray(u1.user_ids)[:40].tolist()
    client = RecommenderClient(server.grpc_url, admin_key=server.admin_key)
    before = [client.recommend(user_id=u, k=10).item_ids for u in users]
    counts = {}
    for items in before:
        for i in items[:3]:
            counts[i] = counts.get(i, 0) + 1
    blocked = sorted(counts, key=counts.get, reverse=True)[:5] + [JEDI]
    assert JEDI in client.similar([STAR_WARS], k=5).item_ids

    stop, lock, outcomes = threading.Event(), threading.Lock(), []
    threads = [threading.Thread(target=_load, args=(server.grpc_url, users[t::8], stop, outcomes, lock))
               for t in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        start = time.monotonic()
        update_blocklist(repo, add=[str(i) for i in blocked])
        reloaded = client.reload(["preprocess", SIMILAR])
        done = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert reloaded == ["preprocess", SIMILAR]
    failed = [o for o in outcomes if isinstance(o[2], Exception)]
    during = [o for o in outcomes if start <= o[0] <= done]
    print(f"\nblocklist change and reload in {done - start:.2f} s; {len(outcomes)} requests, {len(during)} "
          f"during the change, {len(failed)} failed")
    assert not failed, failed[:3]
    old = [o for o in outcomes if o[1] < done and set(o[2]) & set(blocked)]
    new = [o for o in outcomes if o[0] > done]
    assert old, "the blocked items were being recommended before the change"
    assert len(new) > 8 and not [o for o in new if set(o[2]) & set(blocked)]
    rec = client.similar([STAR_WARS], k=20)
    assert not set(rec.item_ids) & set(blocked) and rec.n_recommended == 20

    # The fused pipeline reads the same list: a rebuild keeps it and gives the new models their copy.
    write_repository(ranker, repo, ["onnx"], Tuning(pipeline="fused"))
    client.reload(["preprocess", "postprocess", SIMILAR, "recommend"])
    for u in users:
        assert not set(client.recommend(user_id=u, k=10).item_ids) & set(blocked)
    update_blocklist(repo, remove=[str(JEDI)])
    client.reload([SIMILAR])
    assert JEDI in client.similar([STAR_WARS], k=5).item_ids
