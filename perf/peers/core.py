"""What every serving peer runs per batch: the served pipeline's own steps outside Triton.

A peer answers POST /recommend with the lists `recommend` answers, from the very same files
and code: the repository's preprocess assets (serving.requests: parsing, checks, the users'
histories), its networks' ONNX files run by ONNX Runtime with the served session options
(serving.session_options), and its postprocess assets (serving.lists: rated items masked,
top-K by serving.ranking.top_k_unrated, titles). Only the transport differs.

The peers' HTTP/JSON request, one user or many (every user of a request gets the same k):

    {"item_ids": [50, 172], "ratings": [5, 4], "k": 10}           one new user (fold-in)
    {"user_id": 196, "k": 10}                                     one known user
    {"users": [{"item_ids": [...], "ratings": [...]}, ...], "k": 10}   several users at once

and its answer: {"users": [{"item_ids", "scores", "predicted_ratings" (with a rater), "titles",
"unknown_items", "source" ("model" or "popularity")}, ...]}, one entry per user, each list as
long as the user has unrated items (at most k). A request the served pipeline would refuse is
HTTP 400 with {"error": message}: the message is serving.requests' own.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.contract import ITEM_IDS, PAD, PAD_ID, RATINGS, TOP_K, USER_ID
from serving.lists import Lists
from serving.requests import Catalogue, RequestError, prepare
from serving.session_options import THREADS, session_options


def _latest(folder: Path) -> Path:
    return folder / str(max(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()))


def _ids(rows: list[list]) -> np.ndarray:
    """JSON ids as the tensor serving.requests checks: int64, or UTF-8 bytes (object) for strings."""
    if any(isinstance(v, str) for r in rows for v in r):
        return np.array([[v.encode("utf-8") if isinstance(v, str) else v for v in r] for r in rows], np.object_)
    return np.array([[int(v) for v in r] for r in rows], np.int64)


def parse_body(body: bytes | str | dict) -> dict[str, np.ndarray]:
    """A peer's JSON request -> the `recommend` tensors (serving.contract) serving.requests
    checks: USER_ID int64 [rows, 1], ITEM_IDS int64 (both UTF-8 bytes where the JSON ids are
    strings) / RATINGS float32 [rows, longest] (shorter
    rows padded with PAD / 0, as the contract pads), TOP_K int32 [rows, 1]. Raises RequestError
    (HTTP 400) on malformed JSON or a body of the wrong shape; the rest is checked by prepare()."""
    try:
        obj = json.loads(body) if isinstance(body, (bytes, str)) else body
    except ValueError as e:
        raise RequestError(f"the body is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RequestError("the body must be a JSON object")
    users = obj.get("users", [obj])
    if not isinstance(users, list) or not users or not all(isinstance(u, dict) for u in users):
        raise RequestError("`users` must be a non-empty list of objects")
    try:
        k = obj.get("k")
        tensors = {TOP_K: None if k is None else np.full((len(users), 1), int(k), np.int32)}
        has_id = ["user_id" in u for u in users]
        if any(has_id):
            if not all(has_id):
                raise RequestError("send `user_id` for every user of a request or for none")
            tensors[USER_ID] = _ids([[u["user_id"]] for u in users])
        lists = [(u.get("item_ids", []), u.get("ratings", [])) for u in users]
        if any(len(i) or len(r) for i, r in lists):
            width = max(max(len(i), len(r)) for i, r in lists)
            strings = any(isinstance(v, str) for items, _ in lists for v in items)
            ids = np.full((len(users), width), PAD_ID if strings else PAD, np.object_ if strings else np.int64)
            vals = np.zeros((len(users), width), np.float32)
            for b, (i, r) in enumerate(lists):
                if len(i) != len(r):  # padding would hide it: serving.requests' message, said here
                    raise RequestError(f"item_ids has {len(i)} entries but ratings has {len(r)}")
                ids[b, :len(i)], vals[b, :len(r)] = i, r
            tensors[ITEM_IDS], tensors[RATINGS] = ids, vals
    except RequestError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise RequestError(f"bad field in the request: {e}") from None
    return tensors


class Recommender:
    """The served `recommend` pipeline of a built repository, outside Triton.

    `repo`: a repository `aerec repository` wrote (its aerec_repository.json names the served
    ranker and rater; their newest versions are loaded, as Triton loads them). `threads`: ONNX
    Runtime's intra-op threads per session, as the served configs' `intra_op_thread_count`
    (0: ONNX Runtime's default). Thread-safe: ONNX Runtime sessions may run concurrently."""

    def __init__(self, repo: Path, threads: int = 0):
        repo = Path(repo)
        manifest = json.loads((repo / "aerec_repository.json").read_text())
        self.catalogue = Catalogue.load(str(_latest(repo / "preprocess")))
        self.lists = Lists.load(str(_latest(repo / "postprocess")))
        opts = session_options({"parameters": {THREADS: {"string_value": str(threads)}}} if threads else {})
        open_ = lambda name: name and ort.InferenceSession(  # noqa: E731
            str(_latest(repo / name) / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.ranker, self.rater = open_(manifest.get("ranker")), open_(manifest.get("rater"))
        self.networks = [n for n in (manifest.get("ranker"), manifest.get("rater")) if n]
        self._lock = threading.Lock()

    def _run(self, session, dense: np.ndarray) -> np.ndarray | None:
        if session is None:
            return None
        return session.run(None, {session.get_inputs()[0].name: dense})[0]

    def recommend(self, requests: list[dict[str, np.ndarray]]) -> list[dict | RequestError]:
        """One batch: the tensors of several requests (parse_body's) -> per request its answer
        (a dict, see the module doc) or the RequestError refusing it. A refused request never
        fails its batch-mates; the valid ones' rows go through each network in one run."""
        batch = prepare(requests, self.catalogue)
        out: list[dict | RequestError] = [RequestError(batch.errors[i]) if i in batch.errors else None
                                          for i in range(len(requests))]
        if not batch.spans:
            return out
        scores, ratings = self._run(self.ranker, batch.dense), self._run(self.rater, batch.dense)
        ks = [int(batch.top_k[lo, 0]) for _, lo, _ in batch.spans]
        # The rules' items masked as rated ones; cold rows ranked by popularity, as the served steps do.
        ranked = self.lists.rank(scores, ratings, (batch.dense != 0) | batch.blocked,
                                 [hi - lo for _, lo, hi in batch.spans], ks, batch.dense)
        for (i, lo, hi), (ids, sc, pr, titles, n, source) in zip(batch.spans, ranked):
            users = []
            for r in range(hi - lo):
                m = int(n[r, 0])
                chosen = ids[r, :m].tolist()   # string ids come as UTF-8 bytes: JSON strings here
                user = {"item_ids": [i.decode("utf-8") for i in chosen] if ids.dtype == np.object_ else chosen,
                        "scores": sc[r, :m].tolist(),
                        "titles": [t.decode("utf-8") for t in titles[r, :m]],
                        "unknown_items": int(batch.unknown[lo + r, 0]), "source": source[r, 0].decode("utf-8")}
                if pr is not None:
                    user["predicted_ratings"] = pr[r, :m].tolist()
                users.append(user)
            out[i] = {"users": users}
        return out

    def answer(self, body: bytes | str | dict) -> tuple[int, dict]:
        """One request, unbatched: (HTTP status, JSON object)."""
        try:
            result = self.recommend([parse_body(body)])[0]
        except RequestError as e:
            result = e
        return to_http(result)


def to_http(result: dict | RequestError) -> tuple[int, dict]:
    """An answer or a refusal -> (200, answer) or (400, {"error": message})."""
    if isinstance(result, RequestError):
        return 400, {"error": str(result)}
    return 200, result
