"""The malformed-request catalogues of tests/reliability/test_bad_inputs.py and
tests/server/test_serving.py, checked in-process: the served preprocess and fused `recommend`
models refuse a request with serving.requests' RequestError message (serving/triton_io.py turns
it into HTTP 400 / gRPC INVALID_ARGUMENT), so every case our code refuses is checked here against
the very Catalogue a build of ML-100K u1 serves (the dataset's ids and training history, as
builder/repository.py writes them: 1682 items, scale 1..5). The live files keep a handful of
cases per protocol and pipeline to prove that mapping end to end, and every case Triton itself
refuses (dtype, rank, unknown input, batch size), which no pure function sees."""
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from serving.contract import ITEM_IDS, RATINGS, TOP_K, USER_ID
from serving.requests import Catalogue, RequestError, parse_request

# A request's own mistake, as each protocol reports it (500 / INTERNAL would say the server failed).
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}


@pytest.fixture(scope="module")
def catalogue(u1):
    """What the u1 build's preprocess step loads (Catalogue.load of its version folder)."""
    hist = u1.train.tocsr()
    return Catalogue(np.asarray(u1.item_ids), np.asarray(u1.user_ids), hist.indptr.astype(np.int64),
                     hist.indices.astype(np.int64), hist.data.astype(np.float32), *map(float, u1.scale))


def i64(*v):
    return np.array([list(v)], np.int64)


def f32(*v):
    return np.array([list(v)], np.float32)


def k(n):
    return np.array([[n]], np.int32)


TOP10 = k(10)
# tests/reliability/test_bad_inputs.py's CASES that our code refuses: (case id, tensors, a piece
# of the expected error, matched as pytest.raises(match=) matches it live).
CASES = [
    ("unknown user", {USER_ID: np.array([[999_999]], np.int64), TOP_K: TOP10}, "unknown USER_ID 999999"),
    ("length mismatch", {ITEM_IDS: i64(1, 2, 3), RATINGS: f32(4, 5), TOP_K: TOP10},
     "ITEM_IDS has 3 entries but RATINGS has 2"),
    ("NaN rating", {ITEM_IDS: i64(1, 2), RATINGS: f32(4, np.nan), TOP_K: TOP10}, "NaN or infinity"),
    ("inf rating", {ITEM_IDS: i64(1, 2), RATINGS: f32(4, np.inf), TOP_K: TOP10}, "NaN or infinity"),
    ("rating above scale", {ITEM_IDS: i64(1, 2), RATINGS: f32(4, 9), TOP_K: TOP10}, "rating 9 outside scale 1..5"),
    ("negative rating", {ITEM_IDS: i64(1), RATINGS: f32(-1), TOP_K: TOP10}, "rating -1 outside scale 1..5"),
    ("TOP_K zero", {USER_ID: i64(1), TOP_K: k(0)}, "TOP_K must be in 1..1682, got 0"),
    ("TOP_K negative", {USER_ID: i64(1), TOP_K: k(-5)}, "TOP_K must be in 1..1682, got -5"),
    ("TOP_K huge", {USER_ID: i64(1), TOP_K: k(2**31 - 1)}, "TOP_K must be in 1..1682"),
    ("empty request", {TOP_K: TOP10}, "empty request"),
    ("empty history", {ITEM_IDS: np.zeros((1, 0), np.int64), RATINGS: np.zeros((1, 0), np.float32), TOP_K: TOP10},
     "empty request"),
    ("no known item", {ITEM_IDS: i64(999_998), RATINGS: f32(4), TOP_K: TOP10}, "no known items"),
    ("duplicate item ids", {ITEM_IDS: i64(50, 172, 50), RATINGS: f32(5, 4, 3), TOP_K: TOP10},
     "ITEM_IDS repeats item 50"),
    ("100k items", {ITEM_IDS: np.arange(1, 100_001, dtype=np.int64)[None],
                    RATINGS: np.full((1, 100_000), 3, np.float32), TOP_K: TOP10},
     "100000 ratings in one request; the limit is 10000"),
    ("ratings without items", {RATINGS: f32(4, 5), TOP_K: TOP10}, "RATINGS sent without ITEM_IDS"),
    ("TOP_K not one per row", {USER_ID: i64(1), TOP_K: np.array([[5, 6]], np.int32)}, "TOP_K"),
    ("mixed TOP_K", {USER_ID: np.array([[1], [2]], np.int64), TOP_K: np.array([[5], [6]], np.int32)},
     "TOP_K differs across the rows"),
]
# tests/server/test_serving.py's BAD_REQUESTS that our code refuses (its helper always sends TOP_K, 10 by default).
SERVING_CASES = [
    ("unknown USER_ID 999999", {USER_ID: i64(999_999), TOP_K: TOP10}, "unknown USER_ID 999999"),
    ("ITEM_IDS has 3 entries but RATINGS has 2", {ITEM_IDS: i64(1, 2, 3), RATINGS: f32(4.0, 5.0), TOP_K: TOP10},
     "ITEM_IDS has 3 entries but RATINGS has 2"),
    ("NaN or infinity", {ITEM_IDS: i64(1, 2), RATINGS: f32(4.0, np.nan), TOP_K: TOP10}, "NaN or infinity"),
    ("rating 9 outside scale 1..5", {ITEM_IDS: i64(1, 2), RATINGS: f32(4.0, 9.0), TOP_K: TOP10},
     "rating 9 outside scale 1..5"),
    ("TOP_K must be in 1..1682, got 0", {USER_ID: i64(1), TOP_K: k(0)}, "TOP_K must be in 1..1682, got 0"),
    ("TOP_K must be in 1..1682, got 5000", {USER_ID: i64(1), TOP_K: k(5000)}, "TOP_K must be in 1..1682, got 5000"),
    ("empty request", {TOP_K: TOP10}, "empty request"),
    ("no known items", {ITEM_IDS: i64(999_998), RATINGS: f32(4.0), TOP_K: TOP10}, "no known items"),
]
ALL = CASES + [(f"serving: {name}", tensors, message) for name, tensors, message in SERVING_CASES]


@pytest.mark.parametrize("tensors,message", [c[1:] for c in ALL], ids=[c[0] for c in ALL])
def test_malformed_request_is_named(catalogue, tensors, message):
    with pytest.raises(RequestError, match=message):
        parse_request(tensors, catalogue)
    # and the same catalogue still answers a good request (the model keeps serving)
    (row,) = parse_request({USER_ID: i64(1), TOP_K: k(5)}, catalogue)
    assert row.k == 5 and row.user_row >= 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("tensors,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sdk_raises_request_error_without_retrying(catalogue, protocol, tensors, message):
    """Each case's refusal as tritonclient raises it on that protocol (the model's message with
    400 / INVALID_ARGUMENT), through the SDK: RequestError with the message, no retry. The live
    test in tests/reliability/test_bad_inputs.py shows a server answers so."""
    from client import RecommenderClient
    from client import RequestError as ClientRequestError
    from client.sdk import as_recommender_error
    with pytest.raises(RequestError) as refused:
        parse_request(tensors, catalogue)
    rc = RecommenderClient("127.0.0.1:1", protocol)  # nothing is sent: the call below raises

    def call(_endpoint):
        raise InferenceServerException(msg=str(refused.value), status=INVALID[protocol])
    with pytest.raises(ClientRequestError, match=message) as e:
        rc._retrying(call)
    assert e.value.status == INVALID[protocol] and rc.retried == 0
    assert isinstance(as_recommender_error(e.value.__cause__), ClientRequestError)
