"""A server's life against real Triton servers: a dead Python stub restarted on every serve of a
repository (not only the first), the admin key kept off every command line, a hung server
timing out the async client, and a server told to stop (SIGTERM, as the kubelet sends) whose
requests move to the next endpoint."""
import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from client import RecommenderClient, ServerError
from conftest import build_repository
from server.admin import admin_headers
from server.launcher import TritonServer, child_pids

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

KEY = "lifecycle-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def built(u1, tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    _, repo, _ = build_repository(u1, root)
    return root, repo


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out = [pid]
    for child in child_pids(pid):
        out += _tree(child)
    return out


def _stub_pid(server: TritonServer, model: str) -> int:
    for pid in child_pids(server.process.pid):
        try:
            if f"/{model}/".encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no stub process for {model}")


# -- a dead stub (F-34) ------------------------------------------------------------------------

def test_dead_stub_restarted_on_every_serve_and_not_ready_meanwhile(built):
    """Serve one repository three times (Triton treats a load of an unchanged model as done on
    every serve after a repository's first): on the 2nd and 3rd serve SIGKILL the preprocess
    stub. The supervisor restarts it within seconds, and while requests fail the model
    readiness (`/v2/models/recommend/ready`, the SDK's healthy()) is not 200."""
    root, repo = built
    TritonServer(repo, build_dir=root / "build").start().stop()   # the first serve
    for serve in (2, 3):
        with TritonServer(repo, build_dir=root / "build") as s:
            rc = RecommenderClient(s.grpc_url, retries=0, timeout_s=5)
            assert rc.recommend(user_id=42, k=3).item_ids
            polls, requests, stop = [], [], threading.Event()

            def poll():
                while not stop.is_set():
                    polls.append((time.monotonic(), _status(f"http://{s.http_url}/v2/models/recommend/ready"),
                                  rc.healthy()))
                    time.sleep(0.02)

            def send():
                c = RecommenderClient(s.grpc_url, retries=0, timeout_s=5)
                while not stop.is_set():
                    t = time.monotonic()
                    try:
                        c.recommend(user_id=42, k=3)
                        requests.append((t, True))
                    except ServerError:
                        requests.append((t, False))
                    time.sleep(0.01)
            threads = [threading.Thread(target=poll), threading.Thread(target=send)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            old = _stub_pid(s, "preprocess")
            killed = time.monotonic()
            os.kill(old, signal.SIGKILL)
            while time.monotonic() < killed + 30 and not (s.stub_restarts and requests[-1][1]
                                                          and requests[-1][0] > killed):
                time.sleep(0.1)
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join()
            assert s.stub_restarts, f"serve {serve}: the supervisor never saw the dead stub"
            restart = s.stub_restarts[-1]
            assert restart.model == "preprocess" and not restart.error
            failed = [t for t, ok in requests if not ok]
            assert failed, "no request failed: the stub was not killed?"
            back = next(t for t, ok in requests if ok and t > failed[-1])
            assert back - killed < 10, f"serve {serve}: requests failing {back - killed:.1f} s after the kill"
            assert _stub_pid(s, "preprocess") != old, "no new stub"
            # Readiness not 200 while the model is down: from the supervisor's unload (it acts at
            # once on detection) until the last failed request, every poll says not ready.
            down = [(code, healthy) for t, code, healthy in polls
                    if restart.detected_at + 0.05 < t < failed[-1] - 0.05]
            assert down, "no readiness poll fell inside the outage"
            assert all(code != 200 and not healthy for code, healthy in down), down
            assert polls[-1][1] == 200 and polls[-1][2], "not ready again after the restart"
            assert _status(f"http://{s.http_url}/v2/health/live") == 200
            print(f"\nserve {serve}: stub killed; detected after {restart.detected_at - killed:.2f} s, restart took "
                  f"{restart.reload_seconds:.2f} s; {len(failed)} of {len(requests)} requests failed; answers "
                  f"again {back - killed:.2f} s after the kill; {len(down)} readiness polls in the outage, all "
                  f"not ready")


# -- the admin key (N-02) ----------------------------------------------------------------------

def test_admin_key_on_no_command_line_yet_it_unlocks_the_admin_apis(built):
    """tritonserver reads its keys only from argv; /proc/<pid>/cmdline (what `ps` shows) is
    world-readable. No process of the server's tree shows the key, yet the key (and only it)
    opens the restricted APIs, over HTTP and gRPC."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    root, repo = built
    with TritonServer(repo, build_dir=root / "build", admin_key=KEY) as s:
        pids = _tree(s.process.pid)
        assert len(pids) >= 3, "the Python stubs should be in the tree"
        for pid in pids + [os.getpid()]:   # the launcher (and its supervisor thread) too
            assert KEY.encode() not in open(f"/proc/{pid}/cmdline", "rb").read(), pid
            assert KEY.encode() not in open(f"/proc/{pid}/environ", "rb").read(), pid
        for mod, url, protocol in ((grpcclient, s.grpc_url, "grpc"), (httpclient, s.http_url, "http")):
            c = mod.InferenceServerClient(url)
            assert "recommend" in str(c.get_model_repository_index(headers=admin_headers(KEY, protocol)))
            with pytest.raises(Exception, match="restricted"):
                c.get_model_repository_index(headers=admin_headers(KEY[:-1] + "X", protocol))


# -- a hung server (F-26) ----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_recommend_async_times_out_on_a_hung_server(built, protocol):
    """A server stopped with SIGSTOP accepts connections and never answers: recommend_async
    fails with ServerError after its retry budget (attempts of timeout_s each), like the sync
    path, instead of waiting forever."""
    root, repo = built
    with TritonServer(repo, build_dir=root / "build", supervise=False) as s:
        url = s.grpc_url if protocol == "grpc" else s.http_url
        rc = RecommenderClient(url, protocol, timeout_s=1.0, retries=1, backoff_s=0.1)
        assert asyncio.run(rc.recommend_async(user_id=1, k=3)).item_ids
        os.kill(s.process.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(ServerError, match="after 2 attempts"):
                asyncio.run(rc.recommend_async(user_id=1, k=3))
            took = time.monotonic() - t0
        finally:
            os.kill(s.process.pid, signal.SIGCONT)
        print(f"\n{protocol}: recommend_async on a hung server failed after {took:.1f} s (2 attempts of 1 s)")
        # gRPC gives up sooner by itself (no HTTP/2 SETTINGS frame from the stopped server: "failed
        # to connect"); over HTTP the connection opens and each attempt runs out its timeout_s.
        assert took < 6 and (protocol == "grpc" or took > 1.5)
        assert asyncio.run(rc.recommend_async(user_id=1, k=3)).item_ids, "serves again after SIGCONT"


# -- a server told to stop (F-30) --------------------------------------------------------------

def test_sdk_moves_on_from_a_server_told_to_stop(built, tmp_path):
    """Two servers, clients on both; SIGTERM one (as the kubelet does on a scale-down, where no
    preStop delay let it leave the Service first). Triton fails the requests it holds
    ("Server is stopping", "... has no available versions") and then refuses connections: the
    SDK sends each of them to the other endpoint, so no request fails."""
    root, repo = built
    with TritonServer(repo, build_dir=root / "build", supervise=False) as a, \
            TritonServer(repo, build_dir=root / "build", supervise=False) as b:
        outcomes, stop = [], threading.Event()

        def client(i: int):
            rc = RecommenderClient([a.grpc_url, b.grpc_url], timeout_s=5)
            while not stop.is_set():
                t = time.monotonic()
                try:
                    rc.recommend(user_id=1 + i, k=5)
                    outcomes.append((t, "ok", rc.failovers))
                except Exception as e:
                    outcomes.append((t, f"{type(e).__name__}: {e}", rc.failovers))
                time.sleep(0.01)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        term = time.monotonic()
        a.process.send_signal(signal.SIGTERM)
        a.process.wait(timeout=60)
        exited = time.monotonic() - term
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
        after = [o for t, o, _ in outcomes if t >= term]
        failed = [o for o in after if o != "ok"]
        print(f"\nserver exited {exited:.1f} s after SIGTERM; {len(after)} requests after it, {len(failed)} failed")
        assert not failed, failed[:3]
        assert len(after) > 20
