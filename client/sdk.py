"""A small SDK over tritonclient for the `recommend` ensemble, gRPC or HTTP, sync or async.

    from client import RecommenderClient
    rc = RecommenderClient("127.0.0.1:8001")            # gRPC; protocol="http" for :8000
    rc.recommend(user_id=42, k=10)                       # a known user
    rc.recommend(ratings={50: 5.0, 172: 4.0}, k=10)      # anyone, folded in without retraining
    rc.recommend(items=[50, 172])                        # a history without ratings
    rc.recommend(user_id="u42")                          # a catalogue of string ids
    rc.recommend(user_id=42, exclude=[50], include=[1, 2, 3, 172])   # per-request rules
    RecommenderClient("127.0.0.1:8001,127.0.0.1:8011")  # replicas (`aerec serve --replicas 2`)
    RecommenderClient(url, split={"recommend": 0.5, "recommend_previous": 0.5})   # A/B, sticky per user

Two versions side by side (`aerec repository RUN --keep-previous`: `recommend` the newest,
`recommend_previous` the one before): `split` sends each user to one pipeline, always the same
(`route`: a stable hash of the user id, or of a history's items); `shadow=True` also sends each
`recommend` to the split's other pipelines and returns the routed one's answer (a shadow's error
never fails the call). Every Recommendation says which pipeline (`model`) and version
(`model_version`, the version of the network that ranked it) answered.

Transient failures (server restarting, connection refused, a Python stub being restarted by
the server's supervisor) are retried with capped exponential backoff and jitter; a request's
own error (bad input) is raised at once. Recommending has no side effects, so a retry is safe.
A connection refused, or a port that does not speak the protocol (gRPC sent to the HTTP port,
or HTTP to the gRPC port), is retried only at an endpoint that has answered this client
before: that is a server restarting. At an endpoint that never answered it means no server
is there (a wrong port or protocol, or `aerec serve` not started), which no wait fixes, so
once every endpoint is in that state the call fails at once with `NoServerError`, saying so,
instead of after the whole retry budget (about 9 s at the defaults). A server that is still
starting refuses too: wait for `healthy()` before the first request.

Several endpoints (a comma-separated `url` or a list): requests go round-robin over one client
per endpoint; an endpoint that fails transiently is skipped for `cooldown_s` and the request is
sent at once to the next one (failover), with backoff only when every endpoint is cooling down.
A request error is never retried, on any endpoint. (gRPC's own `round_robin` policy would also
work through tritonclient, whose `channel_args` reach grpc unchanged with a target such as
"ipv4:127.0.0.1:8001,127.0.0.1:8011", but HTTP has no such thing and it hides which replica
failed; one loop here serves both protocols.)

Ids are the served catalogue's: integers, or strings where the data set's ids are strings
("u42", "sku-50"; sent and returned as UTF-8 BYTES tensors). The client reads which from the
model's metadata (its inputs' datatypes) on first use, and converts what it is given: "42" is
sent as 42 to an integer catalogue, 42 as "42" to a string one.

Errors: `RequestError` when the server answered HTTP 400 / gRPC INVALID_ARGUMENT (the request
is wrong: unknown user, bad TOP_K ...; never retried), `ServerError` for everything else once
retries are spent (a server fault), `NoServerError` (a ServerError) when no endpoint has a
server answering the protocol; all are `RecommenderError`s and carry the server's message and
`status`.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import re
import time
from dataclasses import dataclass

import numpy as np

from serving.contract import (EXCLUDE_IDS, INCLUDE_IDS, ITEM_IDS, MAX_ROWS, MODEL, N_RECOMMENDED, PAD, PAD_ID,
                              PREDICTED_RATINGS, RATINGS, RECOMMENDED_IDS, SCORES, SIMILAR, SOURCE, TITLES, TOP_K,
                              UNKNOWN_ITEMS, USER_ID, admin_headers)

PAD_ITEM = PAD   # fills a shorter rating list in a several-user request; the server drops it
PAD_STRING_ITEM = PAD_ID   # the same for string item ids (b"")
# Substrings of errors that say "try again later", never "your request is wrong".
# "has no available versions": the model is known but not loaded right now: a server stopping
# (SIGTERM unloads every model at once) or restarting a model whose stub died; another endpoint
# can answer. (A model the server does not have at all is "... is not found": not retried.)
TRANSIENT = ("StatusCode.UNAVAILABLE", "is not healthy", "Connection refused", "connection reset",
             "Broken pipe", "failed to connect", "Socket closed", "Server is stopping", "timed out",
             "StatusCode.DEADLINE_EXCEEDED", "unexpected EOF", "Connection aborted",
             "has no available versions", "Server exiting", "no answer within")
# Substrings of errors that say "no server answers this protocol at this port": refused, or a
# listener that speaks the other protocol (gRPC at an HTTP port: the HTTP/1 answer closes the
# HTTP/2 connection; HTTP at a gRPC port: geventhttpclient cannot parse the HTTP/2 frames).
NOT_SERVING = ("Connection refused", "Socket closed", "Failed parsing HTTP/2", "Expected HTTP/")
PROTOCOL_NAMES = {"grpc": "gRPC", "http": "HTTP"}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}   # `aerec serve`'s (Triton's) defaults
GRPC_CHANNEL = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
                # Reconnect to a restarted server within a second, not gRPC's default of up to 120 s.
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]


class RecommenderError(Exception):
    """A failed recommendation; `status` is the server's (e.g. "400", "StatusCode.INTERNAL"),
    None where no answer came."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class RequestError(RecommenderError):
    """The request is wrong (HTTP 400 / gRPC INVALID_ARGUMENT): fix it, a retry cannot help."""


class ServerError(RecommenderError):
    """The server failed or could not be reached (HTTP 5xx, gRPC INTERNAL/UNAVAILABLE ...)."""


class NoServerError(ServerError):
    """No endpoint has a server answering the protocol: each refused the connection or speaks
    another protocol, and none has answered this client before (see not_serving_message)."""


REQUEST_STATUSES = ("400", "StatusCode.INVALID_ARGUMENT")


def _status(error: BaseException) -> str | None:
    status = getattr(error, "status", None)  # tritonclient's InferenceServerException
    return str(status()) if callable(status) and status() is not None else None


ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


def as_recommender_error(error: BaseException) -> RecommenderError:
    """tritonclient's (or a transport's) exception as RequestError or ServerError."""
    if isinstance(error, RecommenderError):
        return error
    status = _status(error)
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    # Triton prefixes an ensemble step's error with the ensemble's name: the step's own message
    # is what names the problem.
    message = ENSEMBLE_PREFIX.sub("", message or "", count=1)
    kind = RequestError if status in REQUEST_STATUSES else ServerError
    return kind(message or str(error), status)


def is_not_serving(error: BaseException) -> bool:
    """Whether `error` says nothing answers the protocol at that port (refused, or the other
    protocol's port), as opposed to a server that answered and failed, or timed out."""
    if isinstance(error, ConnectionRefusedError):
        return True
    text = f"{type(error).__name__}: {error}"
    return type(error).__name__ == "HTTPParseError" or any(t in text for t in NOT_SERVING)


def not_serving_message(urls: list[str], protocol: str, error: BaseException) -> str:
    """One line for NoServerError: what is wrong at `urls` over `protocol` and what to check."""
    name, other = PROTOCOL_NAMES[protocol], "http" if protocol == "grpc" else "grpc"
    ports = f"`aerec serve`'s default ports are HTTP {DEFAULT_PORTS['http']} and gRPC {DEFAULT_PORTS['grpc']}"
    where = f"no server answering {name} at {', '.join(urls)}"
    if "refused" in f"{error}".lower():
        return (f"{where} (connection refused: nothing listens there): is `aerec serve` running, and on "
                f"this port? {ports}")
    return (f"{where} (something listens there but does not speak {name}): is it the {PROTOCOL_NAMES[other]} "
            f"port? {ports}: use protocol {other} there, or the {name} port")


def is_transient(error: BaseException) -> bool:
    if isinstance(error, RequestError) or _status(error) in REQUEST_STATUSES:
        return False  # the request itself is wrong, whatever its message says
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return any(t.lower() in text for t in TRANSIENT)


@dataclass
class Recommendation:
    """One user's list, best first. `scores` order it (a top-N model's scores, or the predicted
    ratings where the server has only a rating model); `predicted_ratings` are the rating model's
    predictions for those items, clipped to the rating scale (NaN for a user who rated nothing,
    a cold start), None where the server has none.

    Only real items: a user with fewer unrated items than `k` gets `n_recommended` < k items
    (the server's padding, id -1 or b"", is dropped here); rated items are never recommended.
    `item_ids` are int, or str where the served catalogue's ids are strings. `source`: what
    ranked the list, "model" or "popularity" (a cold start: an unknown user, a user without
    ratings, or no positive rating for the ranker); None from a server without SOURCE."""
    item_ids: list[int] | list[str]
    scores: list[float]
    titles: list[str]
    unknown_items: int
    predicted_ratings: list[float] | None = None
    n_recommended: int = 0
    k: int = 0                      # how many were asked for
    source: str | None = None
    model: str | None = None        # the pipeline that answered ("recommend", "recommend_previous")
    model_version: str | None = None  # its version: the ranking network's (RecommenderClient.pipeline_version)

    @property
    def complete(self) -> bool:
        return self.n_recommended == self.k


def parse_urls(url: str | list[str] | tuple[str, ...]) -> list[str]:
    """Endpoints as a list of host:port: "h:p,h:p" (spaces allowed) or a list of them.
    Raises ValueError when none is given or one is repeated."""
    urls = [u.strip() for u in (url.split(",") if isinstance(url, str) else url)]
    urls = [u for u in urls if u]
    if not urls:
        raise ValueError(f"no server address in {url!r}; give host:port, or several separated by commas")
    if len(set(urls)) != len(urls):
        raise ValueError(f"an endpoint is listed twice in {url!r}")
    return urls


def route_point(key) -> float:
    """A user's fixed point in [0, 1): the first 8 bytes of BLAKE2b over str(key), UTF-8 (the
    same in every process and Python version, unlike the salted hash()); 42 and "42" agree."""
    digest = hashlib.blake2b(str(key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def check_split(split: dict[str, float]) -> dict[str, float]:
    """The split's shares as fractions of their sum, in the order given. ValueError for an empty
    split, a negative or non-finite share, or shares summing to 0."""
    if not split:
        raise ValueError("split names no pipeline; give e.g. {'recommend': 0.5, 'recommend_previous': 0.5}")
    shares = {str(name): float(w) for name, w in split.items()}
    bad = {n: w for n, w in shares.items() if not (w >= 0 and w < float("inf"))}
    if bad or sum(shares.values()) <= 0:
        raise ValueError(f"split shares must be >= 0 and sum to more than 0; got {split}")
    total = sum(shares.values())
    return {n: w / total for n, w in shares.items()}


def route(key, split: dict[str, float]) -> str:
    """The pipeline of `split` ({name: share}) that the user `key` goes to: the one whose slice
    of [0, 1) (cumulative shares, in the split's order) holds route_point(key). Sticky: the same
    key always gets the same pipeline; over many users each gets about its share."""
    point, edge, last = route_point(key), 0.0, None
    for name, share in check_split(split).items():
        edge += share
        if share > 0:
            last = name
            if point < edge:
                return name
    return last   # point above a sum rounded below 1


def parse_split(text: str) -> dict[str, float]:
    """"recommend=0.5,recommend_previous=0.5" -> {"recommend": 0.5, "recommend_previous": 0.5}.
    ValueError for another form."""
    try:
        split = {n.strip(): float(w) for n, w in (p.split("=", 1) for p in text.split(",") if p.strip())}
    except ValueError:
        raise ValueError(f"a split is PIPELINE=SHARE,PIPELINE=SHARE (e.g. recommend=0.5,recommend_previous=0.5); "
                         f"got {text!r}") from None
    return check_split(split) and split


def _route_key(user_id, ratings, items):
    """What routes a request: the user id, else the history's items (sorted)."""
    if user_id is not None:
        return user_id
    return "items:" + ",".join(sorted(str(i) for i in (ratings or items or [])))


class RecommenderClient:
    def __init__(self, url: str | list[str] = "127.0.0.1:8001", protocol: str = "grpc", timeout_s: float = 10.0,
                 model: str = MODEL, retries: int = 10, backoff_s: float = 0.05, backoff_max_s: float = 2.0,
                 admin_key: str | None = None, cooldown_s: float = 1.0, split: dict[str, float] | None = None,
                 shadow: bool = False):
        """`url`: one host:port, several separated by commas, or a list (replicas serving the
        same repository; requests go round-robin over them). `retries` extra attempts on
        transient errors, sleeping backoff_s, 2x, 4x ... (at most backoff_max_s, with jitter):
        the defaults ride out about 11 s of server restart; with several endpoints a failed
        one is skipped for `cooldown_s` seconds and the retry goes straight to another. A
        refused connection (or the other protocol's port) is retried only at an endpoint that
        has answered this client: when no endpoint has, NoServerError at once (module docstring).
        `timeout_s` bounds one attempt, not the call: a server that takes connections and never
        answers (hung, SIGSTOP) fails every attempt after timeout_s, so the call raises
        ServerError only after (retries + 1) x timeout_s plus the backoff sleeps between them;
        `call_budget_s` is that worst case (at the defaults 11 x 10 s + 11.15 s; with
        timeout_s=2 about 33 s over HTTP). Over gRPC a stopped server mostly fails to connect
        before timeout_s, so such a call ends after the sleeps alone (about 8 s). To bound a
        call, lower `retries` with `timeout_s`.
        `admin_key` is needed only for `reload` (see `aerec serve --admin-key-file`).
        One client may be shared by threads over gRPC; over HTTP use one per thread
        (tritonclient's HTTP client is not thread-safe).
        `split` ({pipeline: share}): each user goes to one pipeline, always the same (route);
        without it every request goes to `model`. `shadow`: each `recommend` also goes, once and
        without retries, to the split's other pipelines (over gRPC in a background thread, over
        HTTP after the primary); their answers go to `on_shadow(pipeline, Recommendation or
        exception)` when set, and `shadow_failures` counts their errors."""
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.urls = parse_urls(url)
        self.protocol, self.url, self.timeout_s, self.model = protocol, ",".join(self.urls), timeout_s, model
        self.retries, self.backoff_s, self.backoff_max_s, self.admin_key = retries, backoff_s, backoff_max_s, admin_key
        self.cooldown_s = cooldown_s
        self.retried = 0    # transient failures ridden out so far (for monitoring)
        self.failovers = 0  # of those, retried at once on another endpoint
        if protocol == "grpc":
            import tritonclient.grpc as mod
            self._clients = [mod.InferenceServerClient(u, channel_args=GRPC_CHANNEL) for u in self.urls]
        else:
            import tritonclient.http as mod
            self._clients = [mod.InferenceServerClient(u, network_timeout=timeout_s, connection_timeout=timeout_s)
                             for u in self.urls]
        self._mod = mod
        self._id_types = None   # id_types(): read from the model's metadata on first use
        self._turn = itertools.count()           # round-robin position (next() is atomic under the GIL)
        self._down_until = [0.0] * len(self.urls)  # time.monotonic() before which an endpoint is skipped
        self._has_answered = [False] * len(self.urls)  # has answered this client: a refusal there is a restart
        self._not_serving = [False] * len(self.urls)  # refused (or another protocol) and never answered
        self.split = None if split is None else check_split(split)
        if shadow and (self.split is None or len(self.split) < 2):
            raise ValueError("shadow=True sends each request to the split's other pipelines: give a split of two "
                             "or more, e.g. {'recommend': 1.0, 'recommend_previous': 0.0}")
        self.shadow, self.shadow_failures, self.on_shadow = shadow, 0, None
        self._pipeline_versions: dict[str, str | None] = {}
        self._shadow_pool = None

    # -- requests ---------------------------------------------------------------------------
    def id_types(self) -> dict[str, str]:
        """{USER_ID: datatype, ITEM_IDS: datatype} of the served model ("INT64" or "BYTES"),
        read from its metadata once (on the first request) and kept."""
        if self._id_types is None:
            inputs = {t["name"]: t["datatype"] for t in self.metadata().get("inputs", [])}
            self._id_types = {name: inputs.get(name, "INT64") for name in (USER_ID, ITEM_IDS)}
        return self._id_types

    def _ids(self, values: list, name: str) -> np.ndarray:
        """`values` as the served model's `name` tensor wants them: int64, or UTF-8 bytes (object).
        ValueError for an id an integer catalogue cannot take ("sku-50")."""
        if self.id_types()[name] == "BYTES":
            return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values], np.object_)
        try:
            return np.array([int(v) for v in values], np.int64)
        except (TypeError, ValueError):
            raise ValueError(f"this model's {name} are integers; got {values!r}") from None

    def _inputs(self, user_id, ratings, k, items=None, exclude=None, include=None):
        if user_id is None and not ratings and not items:
            raise ValueError("give user_id, ratings or items (or user_id with one of them)")
        if ratings and items:
            raise ValueError("give ratings (a dict of item: rating) or items (a list of items), not both")
        inputs = self._tensors(None if user_id is None else [user_id], None if not ratings else [ratings], k,
                               None if not items else [items])
        return inputs + self._rules(exclude, include)

    def _rules(self, exclude, include) -> list:
        """EXCLUDE_IDS / INCLUDE_IDS tensors [1, n] for the given rules, none for None or an empty
        exclude (so a server from before the rules still answers). ValueError for include=[]:
        it would allow no item, most likely a mistake."""
        inputs = []
        for name, ids in ((EXCLUDE_IDS, exclude), (INCLUDE_IDS, include)):
            if ids is None:
                continue
            ids = list(ids)
            if not ids:
                if name == INCLUDE_IDS:
                    raise ValueError("include=[] allows no item at all; give the items that may be recommended, "
                                     "or include=None")
                continue
            kind = self.id_types()[ITEM_IDS]
            arr = self._ids(ids, ITEM_IDS).reshape(1, -1)
            t = self._mod.InferInput(name, list(arr.shape), kind)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        return inputs

    def _tensors(self, user_ids: list | None, ratings: list[dict] | None, k: int,
                 items: list[list] | None = None) -> list:
        """Rows of users and/or histories (rating dicts, or item lists sent without RATINGS) as
        one request's tensors; histories shorter than the longest are padded with item -1 (b""
        for string ids), rating 0 (the server drops such entries)."""
        rows = len(user_ids if user_ids is not None else ratings if ratings is not None else items)
        arrays = {TOP_K: (np.full((rows, 1), k, np.int32), "INT32")}
        if user_ids is not None:
            arrays[USER_ID] = (self._ids(user_ids, USER_ID).reshape(rows, 1), self.id_types()[USER_ID])
        histories = ratings if ratings is not None else items
        if histories is not None:
            kind = self.id_types()[ITEM_IDS]
            width = max(1, max(len(h) for h in histories))
            pad = PAD_STRING_ITEM if kind == "BYTES" else PAD_ITEM
            ids = np.full((rows, width), pad, np.object_ if kind == "BYTES" else np.int64)
            for row, h in enumerate(histories):
                ids[row, :len(h)] = self._ids(list(h), ITEM_IDS)
            arrays[ITEM_IDS] = (ids, kind)
            if ratings is not None:
                values = np.zeros((rows, width), np.float32)
                for row, r in enumerate(ratings):
                    values[row, :len(r)] = list(r.values())
                arrays[RATINGS] = (values, "FP32")
        inputs = []
        for name, (arr, dtype) in arrays.items():
            t = self._mod.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        return inputs

    @staticmethod
    def _parse_rows(result, k: int) -> list[Recommendation]:
        """Every row of a result, padding (id -1) trimmed."""
        ids, scores = result.as_numpy(RECOMMENDED_IDS), result.as_numpy(SCORES)
        titles, unknown = result.as_numpy(TITLES), result.as_numpy(UNKNOWN_ITEMS)
        ratings = result.as_numpy(PREDICTED_RATINGS)  # None: the server serves no rating model
        counts = result.as_numpy(N_RECOMMENDED)
        source = result.as_numpy(SOURCE)   # None: a server from before SOURCE
        out = []
        strings = ids.dtype == np.object_   # BYTES: a string catalogue's UTF-8 ids
        for row in range(ids.shape[0]):
            if counts is not None:
                n = int(counts[row, 0])
            else:
                n = int((ids[row] != PAD_STRING_ITEM).sum() if strings else (ids[row] >= 0).sum())
            out.append(Recommendation(
                item_ids=[i.decode("utf-8") for i in ids[row, :n]] if strings else ids[row, :n].tolist(),
                scores=scores[row, :n].tolist(),
                titles=[t.decode("utf-8") for t in titles[row, :n]], unknown_items=int(unknown[row, 0]),
                predicted_ratings=None if ratings is None else ratings[row, :n].tolist(),
                n_recommended=n, k=k, source=None if source is None else source[row, 0].decode("utf-8")))
        return out

    def _parse(self, result, k: int = 10) -> Recommendation:
        return self._parse_rows(result, k)[0]

    def _delays(self):
        """Sleeps between attempts: capped exponential backoff with jitter (no thundering herd)."""
        delay = self.backoff_s
        for _ in range(self.retries):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, self.backoff_max_s)

    @property
    def call_budget_s(self) -> float:
        """Seconds: the longest one call takes when every attempt runs out its timeout_s (a
        hung server): (retries + 1) x timeout_s plus the backoff sleeps at their longest (no
        jitter). Failover to another endpoint skips a sleep, so several endpoints take less."""
        sleeps, delay = 0.0, self.backoff_s
        for _ in range(self.retries):
            sleeps += delay
            delay = min(delay * 2, self.backoff_max_s)
        return (self.retries + 1) * self.timeout_s + sleeps

    def _attempts(self):
        """One item per attempt: the pause to take if it fails transiently, None for the last."""
        yield from self._delays()
        yield None

    def _pick(self) -> int:
        """The endpoint for the next attempt: the next in turn that is not cooling down after a
        failure, else the one whose cooldown ends first."""
        start, now, n = next(self._turn), time.monotonic(), len(self.urls)
        for j in range(n):
            i = (start + j) % n
            if self._down_until[i] <= now:
                return i
        return min(range(n), key=self._down_until.__getitem__)

    def _after_failure(self, error: Exception, pause: float | None, endpoint: int = 0) -> float:
        """The pause before the next attempt (0 when another endpoint can take it at once);
        raises `error` as a RequestError (never retried) or a ServerError when it is not
        transient or no attempt is left (then naming every endpoint tried), NoServerError at
        once when no endpoint has a server answering (is_not_serving, never answered before)."""
        absent = is_not_serving(error) and not self._has_answered[endpoint]
        if absent:
            self._not_serving[endpoint] = True
            if all(self._not_serving[i] and not self._has_answered[i] for i in range(len(self.urls))):
                raise NoServerError(not_serving_message(self.urls, self.protocol, error), _status(error)) from error
        elif not is_transient(error):
            raise as_recommender_error(error) from error
        if pause is None:
            final = as_recommender_error(error)
            raise ServerError(f"no answer from {', '.join(self.urls)} after {self.retries + 1} attempts; "
                              f"last error from {self.urls[endpoint]}: {final}", final.status) from error
        self.retried += 1
        if len(self.urls) > 1:
            now = time.monotonic()
            self._down_until[endpoint] = now + self.cooldown_s
            if any(t <= now for t in self._down_until):
                self.failovers += 1
                return 0.0
        return pause

    def _retrying(self, call):
        """call(endpoint index) with retries on transient errors, each attempt on the endpoint
        _pick chooses; any error that remains is raised as a RequestError (never retried) or a
        ServerError."""
        for pause in self._attempts():
            i = self._pick()
            try:
                answer = call(i)
            except Exception as e:  # tritonclient and the transports raise many types
                time.sleep(self._after_failure(e, pause, i))
            else:
                self._has_answered[i] = True
                return answer

    async def _retrying_async(self, call):
        """_retrying for a coroutine function `call`, sleeping without blocking the event loop."""
        for pause in self._attempts():
            i = self._pick()
            try:
                answer = await call(i)
            except Exception as e:
                await asyncio.sleep(self._after_failure(e, pause, i))
            else:
                self._has_answered[i] = True
                return answer

    def _infer(self, inputs, model: str | None = None):
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return self._retrying(lambda i: self._clients[i].infer(model or self.model, inputs, **kwargs))

    # -- two versions side by side ----------------------------------------------------------
    def pipeline_for(self, user_id=None, ratings=None, items=None) -> str:
        """The pipeline this request goes to: route() over the split, else `model`."""
        return self.model if self.split is None else route(_route_key(user_id, ratings, items), self.split)

    def pipeline_version(self, pipeline: str | None = None) -> str | None:
        """The version a pipeline serves, read from the server once and kept (reload() forgets):
        an ensemble's is its ranking network's (the ranker step, else the rater), the version
        its step pins or, unpinned, the newest the server has loaded; a single model's (the
        fused pipeline) its own newest. None where the server does not say."""
        pipeline = pipeline or self.model
        if pipeline not in self._pipeline_versions:
            self._pipeline_versions[pipeline] = self._read_version(pipeline)
        return self._pipeline_versions[pipeline]

    def _config(self, name: str) -> dict:
        config = self._retrying(lambda i: self._clients[i].get_model_config(name, **(
            {"as_json": True} if self.protocol == "grpc" else {})))
        return config.get("config", config)

    def _newest(self, name: str) -> str | None:
        meta = self._retrying(lambda i: self._clients[i].get_model_metadata(name, **(
            {"as_json": True} if self.protocol == "grpc" else {})))
        versions = [int(v) for v in meta.get("versions", [])]
        return str(max(versions)) if versions else None

    def _read_version(self, pipeline: str) -> str | None:
        try:
            steps = self._config(pipeline).get("ensemble_scheduling", {}).get("step", [])
            if not steps:
                return self._newest(pipeline)
            networks = [s for s in steps if s["model_name"] not in ("preprocess", "postprocess")]
            if not networks:
                return None
            step = next((s for s in networks if s["model_name"].startswith("ranker")), networks[0])
            pinned = int(step.get("model_version", -1))
            return str(pinned) if pinned > 0 else self._newest(step["model_name"])
        except Exception:  # a server that does not say: no version, never a failed recommendation
            return None

    def _answered(self, rec: Recommendation, pipeline: str) -> Recommendation:
        rec.model, rec.model_version = pipeline, self.pipeline_version(pipeline)
        return rec

    def _shadow_one(self, pipeline: str, inputs, k: int) -> None:
        """One attempt at `pipeline`; its answer or error goes to on_shadow, never raised."""
        try:
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            answer = self._answered(self._parse(self._clients[self._pick()].infer(pipeline, inputs, **kwargs), k),
                                    pipeline)
        except Exception as e:  # a shadow never fails the call
            self.shadow_failures += 1
            answer = as_recommender_error(e)
        if self.on_shadow is not None:
            try:
                self.on_shadow(pipeline, answer)
            except Exception:
                pass

    def _send_shadows(self, primary: str, inputs, k: int, after: bool) -> None:
        """The shadows of one request: before the primary over gRPC (a background thread), after
        it over HTTP (its client is not thread-safe); `after` says which call this is."""
        others = [p for p in self.split if p != primary]
        if self.protocol == "grpc" and not after:
            if self._shadow_pool is None:
                from concurrent.futures import ThreadPoolExecutor
                self._shadow_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="aerec-shadow")
            for p in others:
                self._shadow_pool.submit(self._shadow_one, p, inputs, k)
        elif self.protocol == "http" and after:
            for p in others:
                self._shadow_one(p, inputs, k)

    def recommend(self, user_id: int | str | None = None, ratings: dict[int | str, float] | None = None,
                  k: int = 10, items: list[int | str] | None = None, exclude: list[int | str] | None = None,
                  include: list[int | str] | None = None) -> Recommendation:
        """A known user (`user_id`), a history (`ratings` {item: rating}, or `items`: the items
        alone, without ratings, each counted at the rating scale's top), or both (the history
        added to the user's). `exclude`: items never to recommend; `include`: the only items
        that may be recommended (the list is cut short only when fewer than k are allowed);
        ids the model does not know are skipped and counted in `unknown_items`. Raises
        RequestError (the server refused the request: unknown user where the repository
        refuses cold starts, bad k ...) or ServerError; ValueError before sending when nothing
        is given, both `ratings` and `items` are, include is empty, or an id does not fit an
        integer catalogue. With a split, the user's pipeline answers (see `model`)."""
        inputs = self._inputs(user_id, ratings, k, items, exclude, include)
        pipeline = self.pipeline_for(user_id, ratings, items)
        if self.shadow:
            self._send_shadows(pipeline, inputs, k, after=False)
        rec = self._answered(self._parse(self._infer(inputs, pipeline), k), pipeline)
        if self.shadow:
            self._send_shadows(pipeline, inputs, k, after=True)
        return rec

    def similar(self, item_ids: list[int | str], k: int = 10, exclude: list[int | str] | None = None,
                include: list[int | str] | None = None) -> Recommendation:
        """The k items most similar to the seeds `item_ids` (the server's `similar` model: what its
        top-N ranker scores highest for a user whose history is the seeds), best first, never a
        seed, nor an item of `exclude` or of the repository's blocklist; `include`: the only items
        that may be returned. `unknown_items` counts the rules' ids the model does not know.
        Raises RequestError (an unknown seed, bad k) or ServerError; ValueError before sending
        when no seed is given, include is empty or an id does not fit an integer catalogue."""
        if not item_ids:
            raise ValueError("give at least one seed item")
        kind = self.id_types()[ITEM_IDS]
        seeds = self._ids(list(item_ids), ITEM_IDS).reshape(1, -1)
        inputs = []
        for name, arr, dtype in ((ITEM_IDS, seeds, kind), (TOP_K, np.array([[k]], np.int32), "INT32")):
            t = self._mod.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        try:
            return self._parse(self._infer(inputs + self._rules(exclude, include), SIMILAR), k)
        except RecommenderError as e:
            if f"'{SIMILAR}' is not found" not in str(e):
                raise
            # Triton's own words name no cause: say which repositories have the model.
            raise type(e)(f"the server serves no '{SIMILAR}' model: a repository has one only where a top-N "
                          "ranker is served on the CPU (aerec repository TOP_N_RUN); a rating model alone, "
                          "or a --device gpu build, has none", e.status) from e

    def recommend_many(self, user_ids: list[int | str] | None = None, k: int = 10,
                       ratings: list[dict[int | str, float]] | None = None,
                       items: list[list[int | str]] | None = None) -> list[Recommendation]:
        """Many users at once, one Recommendation each, in order.

        `user_ids` alone: one request per user, all in flight at once (the server batches
        them). `ratings` (one dict per new user) or `items` (one list of items without ratings
        per new user), with `user_ids` of the same length or None: rows of up to MAX_ROWS users
        per request, the shorter histories padded (item -1 or b"", rating 0). With several
        endpoints each attempt sends all of them to one endpoint, and a transient failure resends
        them all to another. Raises RequestError for the first request the server refused.
        With a split, each user goes to their own pipeline (one batch of requests per pipeline)."""
        if self.split is not None:
            return self._many_routed(user_ids, k, ratings, items)
        return [self._answered(r, self.model) for r in self._recommend_many(user_ids, k, ratings, items, self.model)]

    def _recommend_many(self, user_ids, k, ratings, items, model: str) -> list[Recommendation]:
        if ratings is not None and items is not None:
            raise ValueError("give ratings (dicts of item: rating) or items (lists of items), not both")
        histories = ratings if ratings is not None else items
        if histories is not None:
            if user_ids is not None and len(user_ids) != len(histories):
                raise ValueError(f"{len(user_ids)} user_ids but {len(histories)} histories")
            out = []
            for lo in range(0, len(histories), MAX_ROWS):
                users = None if user_ids is None else user_ids[lo:lo + MAX_ROWS]
                part = histories[lo:lo + MAX_ROWS]
                tensors = (self._tensors(users, part, k) if ratings is not None
                           else self._tensors(users, None, k, part))
                out += self._parse_rows(self._infer(tensors, model), k)
            return out
        user_ids = list(user_ids or [])
        # All of them go to one endpoint per attempt; a transient failure resends them all elsewhere.
        return self._retrying(lambda endpoint: self._many(self._clients[endpoint], user_ids, k, model))

    def _many_routed(self, user_ids, k, ratings, items) -> list[Recommendation]:
        """recommend_many over a split: the rows grouped by pipeline, each group sent as
        recommend_many sends it, the answers put back in order."""
        n = len(user_ids if user_ids is not None else ratings if ratings is not None else items or [])
        at = lambda seq, i: None if seq is None else seq[i]  # noqa: E731
        groups: dict[str, list[int]] = {}
        for i in range(n):
            groups.setdefault(self.pipeline_for(at(user_ids, i), at(ratings, i), at(items, i)), []).append(i)
        out: list = [None] * n
        for pipeline, rows in groups.items():
            pick = lambda seq: None if seq is None else [seq[i] for i in rows]  # noqa: E731
            for i, rec in zip(rows, self._recommend_many(pick(user_ids), k, pick(ratings), pick(items), pipeline)):
                out[i] = self._answered(rec, pipeline)
        return out

    def _many(self, client, user_ids: list[int], k: int, model: str) -> list[Recommendation]:
        """One request per user on `client`, all in flight at once; the first error is raised."""
        if self.protocol == "http":
            pending = [client.async_infer(model, self._inputs(u, None, k)) for u in user_ids]
            return [self._parse(p.get_result(), k) for p in pending]
        import queue
        done: queue.Queue = queue.Queue()
        for i, u in enumerate(user_ids):
            client.async_infer(model, self._inputs(u, None, k),
                               callback=lambda result, error, i=i: done.put((i, result, error)),
                               client_timeout=self.timeout_s)
        out = [None] * len(user_ids)
        for _ in user_ids:
            i, result, error = done.get(timeout=self.timeout_s * 2)
            if error is not None:
                raise error
            out[i] = self._parse(result, k)
        return out

    async def recommend_async(self, user_id: int | str | None = None, ratings=None, k: int = 10,
                              items=None, exclude=None, include=None) -> Recommendation:
        """asyncio form, over tritonclient's own aio clients, with the sync path's semantics:
        each attempt gets at most `timeout_s` seconds (a hung server is a transient failure),
        transient failures are retried (`retries`, backoff, failover). Raises RequestError or
        ServerError as recommend does. The first call of a client reads the model's id types
        (id_types) with a blocking request."""
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as aio
            opts, kwargs = {"channel_args": GRPC_CHANNEL}, {"client_timeout": self.timeout_s}
        else:
            import tritonclient.http.aio as aio
            opts, kwargs = {"conn_timeout": self.timeout_s}, {}
        inputs = self._inputs(user_id, ratings, k, items, exclude, include)
        pipeline = self.pipeline_for(user_id, ratings, items)

        async def attempt(endpoint: int):
            client = aio.InferenceServerClient(self.urls[endpoint], **opts)
            try:
                # The transports' own timeouts do not cover every stage (aiohttp's is per
                # connection); this bounds the whole attempt.
                result = await asyncio.wait_for(client.infer(pipeline, inputs, **kwargs), self.timeout_s)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no answer within {self.timeout_s} s (timeout_s)") from None
            finally:
                await client.close()
            return self._parse(result, k)
        return self._answered(await self._retrying_async(attempt), pipeline)

    # -- server state -----------------------------------------------------------------------
    def healthy(self) -> bool:
        """Whether at least one endpoint is live, ready and serves the model (one try each)."""
        return any(self.endpoint_health().values())

    def endpoint_health(self) -> dict[str, bool]:
        """{host:port: live, ready and serving the model} for every endpoint."""
        out = {}
        for i, (url, client) in enumerate(zip(self.urls, self._clients)):
            try:
                live = client.is_server_live()
                self._has_answered[i] = True
                out[url] = bool(live and client.is_server_ready() and client.is_model_ready(self.model))
            except Exception:  # unreachable server: not healthy, whatever the transport raised
                out[url] = False
        return out

    def reload(self, models: list[str] | None = None) -> list[str]:
        """Load the newest versions in the server's repository (every model, or `models`),
        networks and steps before the ensemble. Triton loads each new version beside the served
        one and switches when it is ready, so requests keep succeeding. Needs the admin key.
        With several endpoints every one reloads, in turn (one replica reloading at a time)."""
        if not self.admin_key:
            raise PermissionError("reload needs the server's admin key (aerec serve --admin-key-file)")
        headers = admin_headers(self.admin_key, self.protocol)
        if models is None:
            index = self._clients[0].get_model_repository_index(headers=headers)
            names = ([m.name for m in index.models] if self.protocol == "grpc" else [m["name"] for m in index])
            # the pipelines last (recommend, recommend_previous): their steps are loaded first
            models = sorted(set(names), key=lambda n: (n.startswith(self.model), n))
        for client in self._clients:
            for name in models:
                client.load_model(name, headers=headers)
        self._pipeline_versions.clear()   # a reload may serve other versions
        return models

    def metadata(self) -> dict:
        """The model's metadata (inputs, outputs) from any endpoint that answers."""
        meta = self._retrying(lambda i: self._clients[i].get_model_metadata(self.model))
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict
            return MessageToDict(meta)
        return meta
