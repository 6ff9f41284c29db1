"""Malformed requests, over gRPC and HTTP, against a real server: each gets an error that names
the problem with a client-error status (HTTP 400, gRPC INVALID_ARGUMENT), never a server-error
one, and a good request succeeds right after each one. Every case our own code refuses is checked
in-process in tests/serving/test_request_errors.py (same inputs, same messages); here a handful of
them prove the error mapping end to end on both pipelines, with every case Triton itself refuses."""
import http.client
import json
import re

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.repository import Tuning
from conftest import serve_small_model

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


@pytest.fixture(scope="module", params=["ensemble", "fused"])
def server(u1, tmp_path_factory, request):
    """Both pipelines: the ensemble's errors come from preprocess (the session's server of that
    repository), the fused model's from itself."""
    if request.param == "ensemble":
        yield request.getfixturevalue("small_model_server")
        return
    yield from serve_small_model(u1, tmp_path_factory.mktemp(f"bad-inputs-{request.param}"),
                                 Tuning(pipeline=request.param))


def i64(*v):
    return np.array([list(v)], np.int64)


def f32(*v):
    return np.array([list(v)], np.float32)


TOP10 = ("TOP_K", np.array([[10]], np.int32))
# A request's own mistake, on each protocol (500 / INTERNAL would say the server failed).
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}
# (case id, inputs as (name, array[, datatype]), a piece of the expected error). LIVE: the ids
# sent to a server; the others are checked in-process only (tests/serving/test_request_errors.py).
CASES = [
    ("unknown user", [("USER_ID", np.array([[999_999]], np.int64)), TOP10], "unknown USER_ID 999999"),
    ("length mismatch", [("ITEM_IDS", i64(1, 2, 3)), ("RATINGS", f32(4, 5)), TOP10],
     "ITEM_IDS has 3 entries but RATINGS has 2"),
    ("NaN rating", [("ITEM_IDS", i64(1, 2)), ("RATINGS", f32(4, np.nan)), TOP10], "NaN or infinity"),
    ("inf rating", [("ITEM_IDS", i64(1, 2)), ("RATINGS", f32(4, np.inf)), TOP10], "NaN or infinity"),
    ("rating above scale", [("ITEM_IDS", i64(1, 2)), ("RATINGS", f32(4, 9)), TOP10], "rating 9 outside scale 1..5"),
    ("negative rating", [("ITEM_IDS", i64(1)), ("RATINGS", f32(-1)), TOP10], "rating -1 outside scale 1..5"),
    ("TOP_K zero", [("USER_ID", np.array([[1]], np.int64)), ("TOP_K", np.array([[0]], np.int32))],
     "TOP_K must be in 1..1682, got 0"),
    ("TOP_K negative", [("USER_ID", np.array([[1]], np.int64)), ("TOP_K", np.array([[-5]], np.int32))],
     "TOP_K must be in 1..1682, got -5"),
    ("TOP_K huge", [("USER_ID", np.array([[1]], np.int64)), ("TOP_K", np.array([[2**31 - 1]], np.int32))],
     "TOP_K must be in 1..1682"),
    ("empty request", [TOP10], "empty request"),
    ("empty history", [("ITEM_IDS", np.zeros((1, 0), np.int64)), ("RATINGS", np.zeros((1, 0), np.float32)), TOP10],
     "empty request"),
    ("no known item", [("ITEM_IDS", i64(999_998)), ("RATINGS", f32(4)), TOP10], "no known items"),
    ("duplicate item ids", [("ITEM_IDS", i64(50, 172, 50)), ("RATINGS", f32(5, 4, 3)), TOP10],
     "ITEM_IDS repeats item 50"),
    ("100k items", [("ITEM_IDS", np.arange(1, 100_001, dtype=np.int64)[None]),
                    ("RATINGS", np.full((1, 100_000), 3, np.float32)), TOP10],
     "100000 ratings in one request; the limit is 10000"),
    ("ratings without items", [("RATINGS", f32(4, 5)), TOP10], "RATINGS sent without ITEM_IDS"),
    ("TOP_K not one per row", [("USER_ID", np.array([[1]], np.int64)), ("TOP_K", np.array([[5, 6]], np.int32))],
     "TOP_K"),
    ("wrong dtype ITEM_IDS", [("ITEM_IDS", np.array([[1, 2]], np.int32)), ("RATINGS", f32(4, 3)), TOP10],
     "ITEM_IDS"),
    ("wrong dtype RATINGS", [("ITEM_IDS", i64(1, 2)), ("RATINGS", np.array([[4, 3]], np.float64)), TOP10],
     "RATINGS"),
    ("wrong rank", [("ITEM_IDS", np.ones((1, 2, 2), np.int64)), ("RATINGS", np.ones((1, 2, 2), np.float32)),
                    TOP10], "unexpected shape for input"),
    ("strings for ids", [("ITEM_IDS", np.array([[b"fifty", b"\xff\xfe"]], np.object_), "BYTES"),
                         ("RATINGS", f32(4, 3)), TOP10], "ITEM_IDS"),
    ("unknown input", [("USER_ID", np.array([[1]], np.int64)), ("FOO", np.array([[1]], np.int64)), TOP10], "FOO"),
    ("rows disagree", [("USER_ID", np.array([[1], [2]], np.int64)), TOP10], "batch size does not match"),
    ("mixed TOP_K", [("USER_ID", np.array([[1], [2]], np.int64)), ("TOP_K", np.array([[5], [6]], np.int32))],
     "TOP_K differs across the rows"),
]
# Our refusals through the whole path (a rating check, TOP_K against the catalogue, the request
# size limit on a 100k-entry message, a lookup), and every case Triton checks before our code.
TRITON_CHECKED = ["wrong dtype ITEM_IDS", "wrong dtype RATINGS", "wrong rank", "strings for ids", "unknown input",
                  "rows disagree"]
LIVE = ["unknown user", "NaN rating", "TOP_K zero", "100k items"] + TRITON_CHECKED
LIVE_CASES = [c for c in CASES if c[0] in LIVE]


def _infer(mod, client, inputs, model="recommend"):
    tensors = []
    for name, arr, *dt in inputs:
        dtype = dt[0] if dt else {"int64": "INT64", "int32": "INT32", "float32": "FP32",
                                  "float64": "FP64"}[str(arr.dtype)]
        t = mod.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return client.infer(model, tensors)


def _client(server, protocol):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url, network_timeout=30)


def _good(mod, client):
    r = _infer(mod, client, [("USER_ID", np.array([[1]], np.int64)), ("TOP_K", np.array([[5]], np.int32))])
    assert r.as_numpy("RECOMMENDED_IDS").shape == (1, 5)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("inputs,message", [c[1:] for c in LIVE_CASES], ids=[c[0] for c in LIVE_CASES])
def test_malformed_request_is_named_and_server_keeps_serving(server, protocol, inputs, message):
    """Sent through the SDK's retry loop: tritonclient's error names the problem with 400 /
    INVALID_ARGUMENT, and the SDK raises it as RequestError with that message, without retrying."""
    from client import RecommenderClient, RequestError
    from client.sdk import as_recommender_error
    mod, client = _client(server, protocol)
    rc = RecommenderClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol)
    with pytest.raises(RequestError, match=message) as e:
        rc._retrying(lambda _endpoint: _infer(mod, client, inputs))
    raw = e.value.__cause__  # what tritonclient raised
    assert re.search(message, str(raw)) and raw.status() == INVALID[protocol]
    assert e.value.status == INVALID[protocol] and rc.retried == 0
    assert isinstance(as_recommender_error(raw), RequestError)
    _good(mod, client)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_top_k_is_optional_and_defaults_to_ten(server, protocol):  # ten of 1682 items
    mod, client = _client(server, protocol)
    r = _infer(mod, client, [("USER_ID", np.array([[1], [2]], np.int64))])
    assert r.as_numpy("RECOMMENDED_IDS").shape == (2, 10)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model(server, protocol):
    mod, client = _client(server, protocol)
    with pytest.raises(Exception, match="no_such_model"):
        _infer(mod, client, [("USER_ID", np.array([[1]], np.int64)), TOP10], model="no_such_model")
    _good(mod, client)


def _raw_http(server, body: bytes, headers: dict, send: bytes | None = None) -> tuple[int, str]:
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    conn.putrequest("POST", "/v2/models/recommend/infer")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(body if send is None else send)
    if send is not None:  # a client that dies mid-body: close our half and see what comes back
        conn.sock.shutdown(1)
    try:
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (http.client.HTTPException, OSError) as e:
        return 0, str(e)
    finally:
        conn.close()


GOOD_JSON = json.dumps({"inputs": [{"name": "USER_ID", "datatype": "INT64", "shape": [1, 1], "data": [1]},
                                   {"name": "TOP_K", "datatype": "INT32", "shape": [1, 1], "data": [5]}]}).encode()


@pytest.mark.parametrize("body,message", [
    (b'{"inputs": [', "JSON"),                                   # malformed JSON
    (b'{"inputs": [{"name": "\xff\xfe", "datatype": "INT64"}]}', ""),   # non-UTF-8 bytes
    (b'{"inputs": 5}', "inputs"),                                # valid JSON, wrong structure
], ids=["malformed JSON", "non-UTF-8", "wrong structure"])
def test_bad_http_bodies_get_an_error_and_server_keeps_serving(server, body, message):
    # Triton 2.51 answers a body it cannot parse with 400 or 500, and says why.
    status, text = _raw_http(server, body, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    assert status in (400, 500) and message in text, (status, text)
    assert _raw_http(server, GOOD_JSON, {"Content-Length": str(len(GOOD_JSON))})[0] == 200


def test_truncated_http_body_does_not_hurt_the_server(server):
    status, _ = _raw_http(server, GOOD_JSON, {"Content-Length": str(len(GOOD_JSON) + 500)}, send=GOOD_JSON[:40])
    assert status != 200  # never answered as if complete
    status, text = _raw_http(server, GOOD_JSON, {"Content-Length": str(len(GOOD_JSON))})
    assert status == 200 and "RECOMMENDED_IDS" in text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_similar_on_a_repository_without_a_ranker_says_why(server, protocol):
    """A rating model alone gets no `similar` model; the SDK names that cause instead of
    Triton's "Request for unknown model: 'similar' is not found"."""
    from client import RecommenderClient, RecommenderError
    rc = RecommenderClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol)
    with pytest.raises(RecommenderError, match=r"serves no 'similar' model: .*aerec repository TOP_N_RUN"):
        rc.similar([50])
    assert rc.recommend(user_id=1, k=3).item_ids   # and it serves on
