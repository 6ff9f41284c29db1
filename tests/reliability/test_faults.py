"""Faults under load against a real server: a killed Python stub, a restarted server, a new model
version swapped in, a 60 s soak of valid and invalid requests; and the admin APIs closed to
anyone without the key."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from client import RecommenderClient
from conftest import build_repository
from perf.soak import drive, interleave, mixed_requests, soak
from server.admin import admin_headers
from server.launcher import TritonServer, child_pids, free_ports

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

KEY = "test-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def built(u1, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    run, repo, _ = build_repository(u1, root)
    return root, run, repo


@pytest.fixture(scope="module")
def server(built):
    root, _, repo = built
    with TritonServer(repo, build_dir=root / "build", admin_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def load(u1):
    valid, invalid = mixed_requests(u1, n_valid=100)
    return valid, interleave(valid, invalid)


# -- safe defaults -----------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_admin_apis_refused_without_the_key(server, protocol):
    mod, url = (grpcclient, server.grpc_url) if protocol == "grpc" else (httpclient, server.http_url)
    c = mod.InferenceServerClient(url)
    for headers in (None, admin_headers("wrong-key-0123456789", protocol)):
        for call in (lambda: c.load_model("recommend", headers=headers),
                     lambda: c.unload_model("recommend", headers=headers),
                     lambda: c.get_model_repository_index(headers=headers),
                     lambda: c.update_log_settings({"log_file": "/tmp/x"}, headers=headers),
                     lambda: c.update_trace_settings(settings={"trace_file": "/tmp/x"}, headers=headers)):
            with pytest.raises(Exception, match="restricted"):
                call()
    assert c.is_model_ready("recommend"), "the refused calls changed nothing"
    names = c.get_model_repository_index(headers=admin_headers(KEY, protocol))
    assert "recommend" in str(names)


def test_server_binds_loopback_and_has_a_private_key_by_default(built):
    root, _, repo = built
    s = TritonServer(repo, build_dir=root / "build")
    cmd = " ".join(s.command())
    assert "--http-address=127.0.0.1" in cmd and "--grpc-address=127.0.0.1" in cmd
    assert "--metrics-address=127.0.0.1" in cmd
    assert len(s.admin_key) >= 32 and s.admin_key != TritonServer(repo).admin_key, "random per server"
    with pytest.raises(ValueError, match="at least 16"):
        TritonServer(repo, admin_key="short")


# -- faults ------------------------------------------------------------------------------------

def _stubs_of(server_pid: int) -> list[int]:
    """Python stub processes started by this tritonserver (the stub's argv carries its pid)."""
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmd.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"triton_python_backend_stub") and str(server_pid).encode() in argv[1:7]:
            found.append(int(cmd.parent.name))
    return found


def _stub_pid(server, model: str) -> int:
    for pid in child_pids(server.process.pid):
        try:
            if f"/{model}/".encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no stub process for {model}")


@pytest.mark.parametrize("model", ["preprocess", "rater_onnx"])
def test_killed_stub_recovers_under_load(server, load, model):
    """SIGKILL one model's Python stub under load: the supervisor reloads the model; failures
    stop within a bounded time and every later request succeeds."""
    _, requests = load
    stop, outcomes = threading.Event(), []
    t = threading.Thread(target=lambda: outcomes.extend(drive(server.grpc_url, requests, 8, 60, stop)))
    t.start()
    time.sleep(2)
    restarts_before = len(server.stub_restarts)
    killed_at = time.monotonic()
    os.kill(_stub_pid(server, model), signal.SIGKILL)
    # 30 s for the model's restart; more where it hung and the whole server was restarted.
    deadline = killed_at + 90
    while time.monotonic() < deadline and len(server.stub_restarts) == restarts_before:
        time.sleep(0.1)
    time.sleep(10)  # load goes on: requests caught inside the dead stub take seconds to fail
    stop.set()
    t.join()
    assert len(server.stub_restarts) > restarts_before, "the supervisor never noticed the dead stub"
    restart = server.stub_restarts[-1]
    assert restart.model == model and not restart.error
    outcomes.sort(key=lambda o: o.start)
    failed = [i for i, o in enumerate(outcomes) if not o.ok]
    # Recovered: the first request from which on every request (by start time) succeeded.
    recovered_at = outcomes[failed[-1] + 1].start if failed else killed_at
    recovery = recovered_at - killed_at
    after = outcomes[failed[-1] + 1:] if failed else outcomes
    lost_in_flight = sum(outcomes[i].start < killed_at for i in failed)
    print(f"\n{model}: stub killed; detected after {restart.detected_at - killed_at:.2f} s, reload took "
          f"{restart.reload_seconds:.2f} s; {len(failed)} of {len(outcomes)} requests failed ({lost_in_flight} "
          f"already in flight at the kill); requests succeed again from {recovery:.2f} s after the kill "
          f"({len(after)} after that, all good)")
    if restart.server_restarted:
        # Rare: the stub died holding its message queue's lock and the model's unload hung, so
        # the supervisor restarted the server (its restart timeout, then a stop and a start).
        assert recovery < 20 + restart.reload_seconds, f"requests still failing {recovery:.1f} s after the kill"
    else:
        # In the dead stub, or arriving while the supervisor has the model unloaded for its restart.
        assert all("is not healthy" in outcomes[i].error or "Stub" in outcomes[i].error
                   or "has no available versions" in outcomes[i].error for i in failed)
        assert recovery < 15, f"requests still failing {recovery:.1f} s after the kill"
    assert len(after) > 20


def test_a_model_restart_that_hangs_restarts_the_server(built):
    """When a dead stub's model cannot be restarted in time (the backend stuck on a lock the stub
    held), the supervisor restarts the server on the same ports: the same clients are served
    again, by a new process, with a new supervisor."""
    root, _, repo = built
    with TritonServer(repo, build_dir=root / "build", admin_key=KEY) as s:
        s.supervisor.restart_timeout = 0.001   # no model restart answers this fast: each "hangs"
        first, supervisor = s.process.pid, s.supervisor
        os.kill(_stub_pid(s, "postprocess"), signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not s.stub_restarts:
            time.sleep(0.1)
        assert s.stub_restarts, "the supervisor never noticed the dead stub"
        restart = s.stub_restarts[-1]
        assert restart.model == "postprocess" and restart.server_restarted and not restart.error, restart
        assert s.process.pid != first and s.process.poll() is None
        assert s.supervisor is not supervisor and s.supervisor.is_alive()
        supervisor.join(timeout=5)
        assert not supervisor.is_alive(), "the old supervisor kept running beside the new one"
        rc = RecommenderClient(s.grpc_url)
        assert len(rc.recommend(user_id=1, k=5).item_ids) == 5
        assert _stubs_of(s.process.pid), "the new server runs its own stubs"


def test_sdk_retries_through_a_server_restart(built):
    """Stop and start the server on the same ports while a client sends requests back to back:
    the SDK's retry with backoff completes every one, over gRPC and HTTP."""
    root, _, repo = built
    first = TritonServer(repo, build_dir=root / "build").start()
    ports = dict(http_port=first.http_port, grpc_port=first.grpc_port)
    second: list[TritonServer] = []

    def restart():
        time.sleep(1.0)
        first.stop()
        time.sleep(0.5)
        second.append(TritonServer(repo, build_dir=root / "build", **ports).start())
    clients = [RecommenderClient(first.grpc_url, "grpc"), RecommenderClient(first.http_url, "http")]
    t = threading.Thread(target=restart)
    try:
        t.start()
        done, t0 = 0, time.monotonic()
        while t.is_alive() or done < 40:
            for c in clients:
                rec = c.recommend(user_id=1 + done % 100, k=5)  # raises if retries run out
                assert len(rec.item_ids) == 5
                done += 1
        t.join()
        print(f"\n{done} requests over a server restart in {time.monotonic() - t0:.1f} s, all completed; "
              f"retries: gRPC {clients[0].retried}, HTTP {clients[1].retried}")
        assert clients[0].retried + clients[1].retried > 0, "the restart was never seen by the client"
    finally:
        t.join()
        first.stop()
        for s in second:
            s.stop()


def _readiness(s: TritonServer, rc: RecommenderClient, polls: list, stop: threading.Event) -> None:
    """Append (server ready, model ready, rc.healthy()) every 50 ms until `stop` is set."""
    def code(path):
        try:
            with urllib.request.urlopen(f"http://{s.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0
    while not stop.is_set():
        polls.append((code("/v2/health/ready"), code("/v2/models/recommend/ready"), rc.healthy()))
        time.sleep(0.05)


def test_new_version_swapped_in_under_load_without_failures(u1, built, tmp_path):
    """Build a different model into the served repository as a new version and reload it while
    8 clients send requests: none fails, the readiness the SDK and probes read stays ready the
    whole time, and afterwards the server answers with the new model."""
    from builder.config import TrainConfig
    root, _, repo = built
    live = tmp_path / "repo"
    shutil.copytree(repo, live)
    with TritonServer(live, build_dir=root / "build", admin_key=KEY) as s:
        rc = RecommenderClient(s.grpc_url, admin_key=KEY)
        before = rc.recommend(user_id=1, k=10)
        other = TrainConfig(model="sae", hidden=[24, 12], epochs=2, batch_size=64, device="cpu", seed=7)
        build_repository(u1, tmp_path / "b", other)  # the new model's export
        from builder.repository import write_repository
        write_repository(tmp_path / "b" / "run", live, ["onnx"])
        assert (live / "rater_onnx" / "2" / "model.onnx").is_file()
        stop, outcomes = threading.Event(), []
        valid = mixed_requests(u1, n_valid=100)[0]
        t = threading.Thread(target=lambda: outcomes.extend(drive(s.grpc_url, valid, 8, 120, stop)))
        polls: list = []
        probe = threading.Thread(target=_readiness, args=(s, RecommenderClient(s.grpc_url), polls, stop))
        t.start()
        probe.start()
        time.sleep(1.5)
        t0 = time.monotonic()
        reloaded = rc.reload()
        swap = time.monotonic() - t0
        time.sleep(1.5)
        stop.set()
        t.join()
        probe.join()
        after = rc.recommend(user_id=1, k=10)
        failed = [o for o in outcomes if not o.ok]
        during = [o for o in outcomes if t0 <= o.start <= t0 + swap]
        print(f"\nreloaded {reloaded} in {swap:.2f} s; {len(outcomes)} requests, {len(during)} during the swap, "
              f"{len(failed)} failed")
        assert not failed, failed[:3]
        assert len(during) > 0
        not_ready = [p for p in polls if p != (200, 200, True)]
        print(f"readiness: {len(polls)} polls over the reload, {len(not_ready)} not ready")
        assert len(polls) > 20 and not not_ready, not_ready[:5]
        assert after.scores != before.scores, "still serving the old model"
        state = grpcclient.InferenceServerClient(s.grpc_url).get_model_repository_index(
            headers=admin_headers(KEY, "grpc"))
        served = {(m.name, m.version) for m in state.models if m.state == "READY"}
        assert ("rater_onnx", "2") in served and ("rater_onnx", "1") not in served


def test_soak_mixed_valid_and_invalid(server, u1):
    """AEREC_SOAK_SECONDS (default 60) of concurrency-64 load, one request in five invalid:
    no valid request fails, every invalid one gets its own error, memory grows <= 10%."""
    seconds = float(os.environ.get("AEREC_SOAK_SECONDS", "60"))
    r = soak(server, u1, seconds=seconds, concurrency=64)
    print(f"\nsoak {r.seconds} s at c={r.concurrency}: {r.requests} requests ({r.valid} valid, {r.invalid} "
          f"invalid), {r.throughput}/s, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms; unexpected {r.unexpected}; "
          f"server RSS {r.rss_start_mb} -> {r.rss_end_mb} MB ({100 * r.rss_growth:+.1f}%)")
    assert r.unexpected == 0, r.first_unexpected
    assert r.valid_failed == 0
    assert r.invalid > 0 and r.valid > 0
    assert r.rss_growth <= 0.10


def test_cli_serve_with_admin_key_file_then_reload(built, tmp_path):
    """`aerec serve --admin-key-file` makes a private key file; `aerec reload` with it works,
    and a key file others can read is refused."""
    _, _, repo = built
    aerec = str(Path(sys.executable).parent / "aerec")
    key, http, grpc = tmp_path / "admin.key", *free_ports(2)
    serve = subprocess.Popen([aerec, "serve", "--repository", str(repo), "--http-port", str(http),
                              "--grpc-port", str(grpc), "--admin-key-file", str(key)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rc = RecommenderClient(f"127.0.0.1:{grpc}")
        deadline = time.monotonic() + 120
        while not rc.healthy() and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(0.5)
        assert rc.healthy(), serve.stdout.read() if serve.poll() is not None else "not ready"
        triton = child_pids(serve.pid)
        assert _stubs_of(triton[0])
        assert key.stat().st_mode & 0o777 == 0o600
        # No process aerec started shows the key (ps reads /proc/<pid>/cmdline, world-readable).
        secret, tree = key.read_text().strip().encode(), [serve.pid]
        for pid in tree:
            tree += child_pids(pid)
        assert len(tree) >= 4   # aerec serve, tritonserver, the Python stubs
        assert not [pid for pid in tree if secret in Path(f"/proc/{pid}/cmdline").read_bytes()]
        ok = subprocess.run([aerec, "reload", "--admin-key-file", str(key), "--url", f"127.0.0.1:{grpc}"],
                            capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and "reloaded: " in ok.stdout and "recommend" in ok.stdout, ok.stderr
        key.chmod(0o644)
        refused = subprocess.run([aerec, "reload", "--admin-key-file", str(key), "--url", f"127.0.0.1:{grpc}"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "readable by others" in refused.stderr + refused.stdout
        assert len(rc.recommend(user_id=1, k=5).item_ids) == 5
    finally:
        serve.terminate()
        out, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, out
    assert "restricted APIs" in out and "open to holders of the key" in out
    assert _stubs_of(triton[0]) == [], "a Python stub outlived the server (a reload just before the stop)"


def test_supervisor_follows_a_reloaded_models_new_stub(server):
    """Its cheap ticks only check the stubs it knows; a reload through the launcher makes it
    learn the new stub at once (and forget the old one when Triton reaps it), so a stub that
    dies right after a reload is still restarted."""
    stubs = lambda: {p for p, m in dict(server.supervisor.known).items() if m == "postprocess"}  # noqa: E731
    before = stubs()
    assert before, "the supervisor does not know the postprocess stub"
    server.load_model("postprocess", force=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (not stubs() or stubs() & before):
        time.sleep(0.05)
    after = stubs()
    assert after and not after & before
    assert all(b"/postprocess/" in open(f"/proc/{p}/cmdline", "rb").read() for p in after)
