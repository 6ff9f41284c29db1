"""Replicas of the Triton server on one machine (server/replicas.py, `aerec serve --replicas`) and
the SDK balancing over them and failing over from a dead one: real servers, real gRPC and HTTP."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from client import NoServerError, RecommenderClient, RequestError
from client.sdk import parse_urls
from conftest import build_repository
from server.launcher import TritonServer, child_pids, free_ports, port_in_use
from server.replicas import ReplicaSet, replica_ports

USERS = [1, 2, 3, 42]  # in u1.base


@pytest.fixture(scope="module")
def built(u1, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    _, repo, _ = build_repository(u1, root)
    return root, repo


@pytest.fixture(scope="module")
def replicas(built):
    root, repo = built
    with ReplicaSet(repo, 2, build_dir=root / "build") as rs:
        yield rs


def request_counts(rs: ReplicaSet, outcome: str = "success") -> list[int]:
    """Each replica's count of `recommend` requests that ended in `outcome` ("success" or
    "fail"), from Triton's statistics API; 0 for a replica that does not answer."""
    out = []
    for url in rs.urls("http"):
        try:
            with urllib.request.urlopen(f"http://{url}/v2/models/recommend/stats", timeout=5) as r:
                stats = json.load(r)["model_stats"][0]["inference_stats"]
        except OSError:
            out.append(0)
            continue
        out.append(int(stats[outcome]["count"]))
    return out


def counts_after(rs: ReplicaSet, before: list[int], total: int, outcome: str = "success") -> list[int]:
    """Each replica's count of `outcome` since `before`, read once the counts add up to at
    least `total` (within 10 s). Triton adds an ensemble request to its statistics after the
    response is sent, so a read right after the last answer can miss that request."""
    deadline = time.monotonic() + 10
    while True:
        delta = [b - a for a, b in zip(before, request_counts(rs, outcome))]
        if sum(delta) >= total or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def test_replica_ports_offsets_and_clashes():
    assert replica_ports(2, 8000, 8001, 8002, 10) == [(8000, 8001, 8002), (8010, 8011, 8012)]
    assert replica_ports(2, None, None, None) == [(None, None, None)] * 2
    with pytest.raises(ValueError, match="port 8001 is also replica 0's gRPC port"):
        replica_ports(2, 8000, 8001, None, 1)
    with pytest.raises(ValueError, match="outside 1..65535"):
        replica_ports(2, 65530, None, None, 10)
    with pytest.raises(ValueError, match="at least 1"):
        replica_ports(0, None, None, None)


def test_ports_left_to_the_os_are_distinct(tmp_path):
    # Picked one at a time the OS once handed out one port for both HTTP and gRPC, and the
    # server exited ("cannot listen to HTTP requests and GRPC requests at the same address").
    for _ in range(20):
        assert len(set(free_ports(40))) == 40
        server = TritonServer(tmp_path, grpc_port=free_ports(1)[0])
        ports = (server.http_port, server.grpc_port, server.metrics_port)
        assert len(set(ports)) == 3


def test_endpoint_lists_are_parsed_and_checked():
    assert parse_urls("127.0.0.1:8001, 127.0.0.1:8011") == ["127.0.0.1:8001", "127.0.0.1:8011"]
    assert parse_urls(["a:1", "b:2"]) == ["a:1", "b:2"]
    with pytest.raises(ValueError, match="no server address"):
        RecommenderClient(" , ")
    with pytest.raises(ValueError, match="listed twice"):
        RecommenderClient("a:1,a:1")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_endpoint_dead_is_a_server_error_naming_them(protocol):
    urls = [f"127.0.0.1:{p}" for p in free_ports(2)]
    rc = RecommenderClient(urls, protocol, timeout_s=1, retries=3, backoff_s=0.01, cooldown_s=30)
    assert rc.endpoint_health() == dict.fromkeys(urls, False) and not rc.healthy()
    with pytest.raises(NoServerError, match="no server answering") as e:
        rc.recommend(user_id=1)
    assert all(u in str(e.value) for u in urls)
    # The first refusal moves to the other endpoint at once; when it refuses too, no endpoint
    # has a server (neither ever answered): no backoff, no more attempts.
    assert (rc.retried, rc.failovers) == (1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_requests_alternate_and_a_request_error_is_not_retried(replicas, protocol):
    rc = RecommenderClient(replicas.urls(protocol), protocol)
    assert rc.endpoint_health() == dict.fromkeys(replicas.urls(protocol), True)
    before = request_counts(replicas)
    for user in USERS * 2:
        assert len(rc.recommend(user_id=user, k=3).item_ids) == 3
    assert counts_after(replicas, before, 8) == [4, 4]  # round-robin
    failed = request_counts(replicas, "fail")
    with pytest.raises(RequestError, match="unknown USER_ID 123456"):
        rc.recommend(user_id=123_456)
    assert rc.retried == 0
    # Refused by one replica only (Triton counts an ensemble's failure once per failed step and once whole).
    assert sorted(d > 0 for d in counts_after(replicas, failed, 1, "fail")) == [False, True]


@pytest.mark.slow
def test_load_survives_a_replica_killed_midway_then_it_restarts(replicas):
    """4 closed-loop workers (2 gRPC, 2 HTTP, one client each over both replicas); replica 1's
    tritonserver is SIGKILLed halfway: no valid request fails, and both replicas served before."""
    stop, lock = threading.Event(), threading.Lock()
    done, errors, failovers = [0], [], []

    def worker(protocol: str, w: int) -> None:
        rc = RecommenderClient(replicas.urls(protocol), protocol, timeout_s=5)
        i = w
        while not stop.is_set():
            i += 1
            try:
                assert len(rc.recommend(user_id=USERS[i % len(USERS)], k=5).item_ids) == 5
                with lock:
                    done[0] += 1
            except Exception as e:  # every failure is a test failure, kept to be shown
                errors.append(f"{protocol}: {type(e).__name__}: {e}")
        failovers.append(rc.failovers)

    before = request_counts(replicas)
    threads = [threading.Thread(target=worker, args=(p, w), daemon=True)
               for w, p in enumerate(["grpc", "grpc", "http", "http"])]
    for t in threads:
        t.start()
    time.sleep(2)
    at_kill = request_counts(replicas)
    served_at_kill = done[0]
    victim = replicas.servers[1].process
    os.kill(victim.pid, signal.SIGKILL)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == [], errors[:5]
    assert all(b > a for a, b in zip(before, at_kill)), (before, at_kill)  # both replicas served
    assert done[0] > served_at_kill + 10  # and the survivor kept serving
    assert sum(failovers) > 0  # requests sent to the dead replica went on to the live one
    assert request_counts(replicas)[0] > at_kill[0] and victim.poll() == -signal.SIGKILL

    events = replicas.check()
    assert [e.kind for e in events] == ["died", "restarted"], [str(e) for e in events]
    assert replicas.alive() == [True, True]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # nothing of the dead replica (its Python stubs) is left
        try:
            os.killpg(victim.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"processes of the killed replica's group {victim.pid} are still running")
    rc = RecommenderClient(replicas.urls("grpc")[1])
    assert len(rc.recommend(user_id=42, k=3).item_ids) == 3


@pytest.mark.slow
def test_cli_serve_replicas_answers_on_every_endpoint_and_stops(built):
    """`aerec serve --replicas 2` on free ports prints every endpoint, `aerec recommend` takes
    them as one list, a killed replica is restarted, and SIGTERM stops both replicas."""
    root, repo = built
    serve = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--repository", str(repo), "--replicas", "2",
                              "--http-port", "0", "--grpc-port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in serve.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + 180
    try:
        while not any(line.startswith("clients:") for line in seen) and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert serve.poll() is None, "".join(seen)
        endpoints = [re.search(r"HTTP (\S+), gRPC (\S+), metrics (\S+), log (\S+)", line).groups()
                     for line in seen if line.startswith("replica ")]
        assert len(endpoints) == 2, "".join(seen)
        for http, grpc, metrics, log in endpoints:
            assert os.path.isfile(log)
            for url, protocol in ((grpc, "grpc"), (http, "http")):
                assert len(RecommenderClient(url, protocol).recommend(user_id=42, k=3).item_ids) == 3
        r = subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--user", "42", "-k", "3",
                            "--url", ",".join(e[1] for e in endpoints)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "score" in r.stdout, r.stderr
        # A replica killed from outside is said to have died, and restarted on its ports.
        os.kill(child_pids(serve.pid)[0], signal.SIGKILL)
        while not any(" restarted: " in line for line in seen) and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert serve.poll() is None, "".join(seen)
        assert any(re.search(r"replica \d died: exit code -9", line) for line in seen), "".join(seen)
        assert any(" restarted: " in line for line in seen), "".join(seen)
        for http, grpc, metrics, log in endpoints:
            assert len(RecommenderClient(grpc).recommend(user_id=42, k=3).item_ids) == 3
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert serve.returncode == 0, "".join(seen)
    for http, grpc, metrics, _ in endpoints:
        for url in (http, grpc, metrics):
            host, port = url.rsplit(":", 1)
            port_in_use(host, int(port))  # raises ValueError while a replica still listens
