"""The stub supervisor's rule for a dead stub, on real processes: a child that exited and is not
reaped yet is defunct ("Z" in /proc), as a stub Triton is stopping is for a moment and a killed
stub is for good. The server beside it is a stand-in that records restarts (the restarts
themselves are tested on a live server in tests/reliability)."""
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from server.launcher import StubSupervisor, _state


@pytest.fixture
def supervised():
    """A supervisor over a stand-in server (a live process, restarts recorded) and a function
    that starts a child which exits at once and stays defunct until it is waited for."""
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    restarted: list[str] = []
    server = SimpleNamespace(process=host, stub_restarts=[],
                             restart_model=lambda model, timeout: restarted.append(model))
    children = []

    def defunct_child():
        child = subprocess.Popen(["true"])
        children.append(child)
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "Z"
        return child

    yield StubSupervisor(server, grace=0.3), restarted, defunct_child
    host.kill()
    host.wait()
    for child in children:
        child.wait()


def test_a_stub_reaped_within_the_grace_is_no_death(supervised):
    """The outgoing stub of a reload: defunct at one tick, reaped by the next."""
    supervisor, restarted, defunct_child = supervised
    child = defunct_child()
    supervisor.known[child.pid] = "postprocess"
    assert supervisor.scan(full=False) and restarted == []
    child.wait()   # what the backend's waitpid does
    time.sleep(0.4)
    assert supervisor.scan(full=False) and restarted == []
    assert child.pid not in supervisor.known and child.pid not in supervisor.defunct_since


def test_a_stub_defunct_past_the_grace_is_restarted_once(supervised):
    """A killed stub: nobody reaps it; its model is restarted once the grace is over, once."""
    supervisor, restarted, defunct_child = supervised
    child = defunct_child()
    supervisor.known[child.pid] = "preprocess"
    assert supervisor.scan(full=False) and restarted == []
    time.sleep(0.4)
    assert supervisor.scan(full=False) and restarted == ["preprocess"]
    assert supervisor.server.stub_restarts[-1].model == "preprocess"
    assert supervisor.scan(full=False) and restarted == ["preprocess"]
