"""The autoscaler's metric against a real server: prometheus-adapter's rule, as rendered, is
evaluated on two scrapes of Triton's /metrics taken around a burst of load, and must read the
queue time a `recommend` request really waits (Triton's per-model statistics, the
/v2/models/<step>/stats queue time of every ensemble step per `recommend` request)."""
import json
import re
import threading
import time
import urllib.request

import pytest
import yaml

from client import RecommenderClient
from server.deploy.kubernetes import MODEL, render_kubernetes

pytestmark = pytest.mark.slow

# Triton's k8s-onprem chart's rule, the one aerec rendered before: kept to show the test tells
# the two apart (it reads about a fifth of the wait with four steps).
K8S_ONPREM_QUERY = ("avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])"
                    "/(1+delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)")


def _scrape(metrics_url: str) -> dict:
    """{(metric, model, version): value} for Triton's per-model counters."""
    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'(nv_\w+)\{model="([^"]+)",version="(\d+)"\} (\S+)', line)
        if m:
            out[(m.group(1), m.group(2), m.group(3))] = float(m.group(4))
    return out


class PromQL:
    """Evaluates the subset of PromQL the adapter rules use, for one pod (so <<.LabelMatchers>>
    selects everything scraped and <<.GroupBy>> leaves one group): delta(selector[w]) as the
    difference of two scrapes, sum/avg ... by, clamp_min, numbers, + and /, parentheses.
    A vector is {(model, version): value}; an aggregate is {(): value}."""

    def __init__(self, query: str, before: dict, after: dict):
        self.s = query.replace("<<.LabelMatchers>>,", "").replace("<<.LabelMatchers>>", "")
        self.s = self.s.replace("<<.GroupBy>>", "pod").replace(" ", "")
        self.i, self.before, self.after = 0, before, after

    def value(self) -> float:
        result = self._expr()
        assert self.i == len(self.s), f"unparsed: {self.s[self.i:]}"
        assert list(result) == [()], result   # one number for the pod
        return result[()]

    def _eat(self, token: str) -> None:
        assert self.s.startswith(token, self.i), f"expected {token!r} at {self.s[self.i:]!r}"
        self.i += len(token)

    def _expr(self):
        left = self._term()
        while self.i < len(self.s) and self.s[self.i] in "+/":
            op = self.s[self.i]
            self.i += 1
            left = self._binary(op, left, self._term())
        return left

    @staticmethod
    def _binary(op, a, b):
        f = (lambda x, y: x + y) if op == "+" else (lambda x, y: x / y)
        if isinstance(a, float):
            return {k: f(a, v) for k, v in b.items()}
        if isinstance(b, float):
            return {k: f(v, b) for k, v in a.items()}
        return {k: f(a[k], b[k]) for k in a if k in b}   # one-to-one on identical labels

    def _term(self):
        m = re.compile(r"\d+(\.\d+)?").match(self.s, self.i)
        if m:
            self.i = m.end()
            return float(m.group())
        if self.s.startswith("(", self.i):
            self._eat("(")
            inner = self._expr()
            self._eat(")")
            return inner
        name = re.compile(r"[a-z_]+").match(self.s, self.i).group()
        self.i += len(name)
        self._eat("(")
        if name == "delta":
            return self._delta()
        arg = self._expr()
        if name == "clamp_min":
            self._eat(",")
            low = self._term()
            self._eat(")")
            return {k: max(v, low) for k, v in arg.items()}
        assert name in ("sum", "avg"), name
        self._eat(")")
        if self.s.startswith("by(pod)", self.i):
            self.i += len("by(pod)")
        values = list(arg.values())
        return {(): sum(values) if name == "sum" else sum(values) / len(values)}

    def _delta(self):
        m = re.compile(r"(\w+)\{([^}]*)\}\[\d+s\]\)").match(self.s, self.i)
        self.i = m.end()
        metric, matchers = m.group(1), m.group(2)
        label, op, pattern = "model", "=~", ".*"   # no matcher: every model
        if matchers:
            label, op, pattern = re.fullmatch(r'(\w+)(=~|=)"([^"]*)"', matchers).groups()
            assert label == "model"

        def keep(model: str) -> bool:
            return re.fullmatch(pattern, model) is not None if op == "=~" else model == pattern
        return {(model, version): self.after[(metric, model, version)] - self.before[(metric, model, version)]
                for (name, model, version) in self.after if name == metric and keep(model)}


def _step_queue_us(http_url: str, steps: list[str], since: dict | None = None) -> dict:
    """{model: (queue time in us, request count)} from Triton's statistics extension. With
    `since` (an earlier read), read again (within 10 s) until every step has counted as many
    requests since then as the ensemble: Triton adds a request to a model's statistics after
    its response is sent, so a read right after the last answer can see one request short."""
    deadline = time.monotonic() + 10
    while True:
        out = {}
        for model in steps + [MODEL]:
            stats = json.loads(urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10).read())
            (s,) = stats["model_stats"]
            out[model] = (s["inference_stats"]["queue"]["ns"] / 1e3, s["inference_stats"]["success"]["count"])
        if since is None or time.monotonic() > deadline or \
                len({out[m][1] - since[m][1] for m in out}) == 1:
            return out
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(ranker_and_rater_server):
    return ranker_and_rater_server


def test_adapter_rule_reads_the_queue_time_a_request_waits(server, tmp_path):
    files = render_kubernetes(server.repository, 1, False)
    (rule,) = yaml.safe_load(files["prometheus-adapter-values.yaml"])["rules"]["custom"]
    steps = [m for m in json.loads(urllib.request.urlopen(
        f"http://{server.http_url}/v2/models/{MODEL}/config", timeout=10).read())["ensemble_scheduling"]["step"]]
    steps = [s["model_name"] for s in steps]

    before, stats_before = _scrape(server.metrics_url), _step_queue_us(server.http_url, steps)
    stop = time.time() + 6

    def load(i):   # 16 clients, enough that requests queue behind each other's batches on 2 cores
        client, k = RecommenderClient(server.grpc_url), 0
        while time.time() < stop:
            client.recommend(user_id=1 + (k * 7 + i) % 943, k=10)
            k += 1
    threads = [threading.Thread(target=load, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    after, stats_after = _scrape(server.metrics_url), _step_queue_us(server.http_url, steps, stats_before)

    d = {m: (stats_after[m][0] - stats_before[m][0], stats_after[m][1] - stats_before[m][1]) for m in stats_after}
    n_requests = d[MODEL][1]
    assert n_requests > 100 and all(d[s][1] == n_requests for s in steps)   # each step once per request
    waited_us = sum(d[s][0] for s in steps) / n_requests
    metric_us = PromQL(rule["metricsQuery"], before, after).value()
    old_us = PromQL(K8S_ONPREM_QUERY, before, after).value()
    print(f"\n{n_requests:.0f} requests: waited {waited_us:.0f} us in queues; adapter rule {metric_us:.0f} us; "
          f"k8s-onprem rule {old_us:.0f} us")
    assert waited_us > 100                       # the load really queued
    assert abs(metric_us - waited_us) <= 0.2 * waited_us
    assert old_us < 0.5 * waited_us              # what the old rule read: the test tells them apart


def test_adapter_rule_reads_zero_for_an_idle_pod(server):
    files = render_kubernetes(server.repository, 1, False)
    (rule,) = yaml.safe_load(files["prometheus-adapter-values.yaml"])["rules"]["custom"]
    idle = _scrape(server.metrics_url)
    assert PromQL(rule["metricsQuery"], idle, idle).value() == 0.0
