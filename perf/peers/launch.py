"""Start a peer (perf.peers.__main__) as a process group of its own, wait until it answers,
read its memory, stop it."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from perf.soak import process_tree_rss_mb
from server.launcher import ROOT, free_port


class PeerFailed(RuntimeError):
    """A peer did not start or answer; the message holds the end of its log."""


class Peer:
    """`with Peer("fastapi", repo, threads=1, max_batch_size=16, batch_wait_timeout_s=0.002) as p:`
    p.port answers POST /recommend. `log`: where the peer's output goes (default
    build/peers/KIND.log). `start_timeout_s`: Ray needs tens of seconds on 2 cores. Raises
    PeerFailed (with the end of the log) when the peer exits or does not answer in time."""

    def __init__(self, kind: str, repo: Path, threads: int = 0, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.002, log: Path | None = None, start_timeout_s: float = 180):
        self.kind, self.repo, self.threads = kind, Path(repo), threads
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self.log = log or ROOT / "build" / "peers" / f"{kind}.log"
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0

    def __enter__(self) -> "Peer":
        self.port = free_port()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "perf.peers", self.kind, str(self.repo), "--port", str(self.port),
               "--threads", str(self.threads), "--max-batch-size", str(self.max_batch_size),
               "--batch-wait-ms", str(self.batch_wait_timeout_s * 1000)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
        t0 = time.monotonic()
        with open(self.log, "wb") as f:
            # A session of its own: stop() ends the peer and every process it started, by group.
            self.process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                            start_new_session=True)
        try:
            self._wait_ready(t0 + self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        # Ready means our app answers: an empty request is refused with serving.requests' message.
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerFailed(f"{self.kind} exited ({self.process.returncode}): {self.tail()}")
            try:
                status, body = post(self.port, b"{}", timeout=5)
                if status == 400 and b"empty request" in body:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.5)
        raise PeerFailed(f"{self.kind} did not answer within {self.start_timeout_s:.0f} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        """The end of the peer's log."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def rss_mb(self) -> float:
        """Resident memory of the peer's whole process tree (Ray: its raylet, GCS, proxy and
        replica too), MB."""
        return process_tree_rss_mb(self.process.pid)

    def stop(self) -> None:
        """SIGTERM to the peer's process group, SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None and not _group_alive(self.process.pid):
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            t0 = time.monotonic()
            while time.monotonic() - t0 < wait and _group_alive(self.process.pid):
                self.process.poll()
                time.sleep(0.2)
            if not _group_alive(self.process.pid):
                break
        self.process.poll()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (an unreaped leader counts: stop() polls it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def post(port: int, body: bytes, path: str = "/recommend", timeout: float = 30) -> tuple[int, bytes]:
    """One POST to 127.0.0.1:`port`: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def recommend(port: int, obj: dict) -> tuple[int, dict]:
    """POST `obj` as JSON to a peer's /recommend: (status, answer)."""
    status, body = post(port, json.dumps(obj).encode())
    return status, json.loads(body)
