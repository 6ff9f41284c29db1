"""Start and stop the embedded Triton server (the binary inside the nvidia-pytriton wheel).

No Docker, no GPU: the launcher assembles a backend directory of the project's own (the
wheel's Python backend plus the stub for this interpreter, and our Python-based `onnxruntime`
backend), binds to loopback, waits until the server is ready, and stops it cleanly.

Safe by default: the admin APIs (model repository load/unload, logging, trace, shared memory)
answer only requests carrying the admin key, which is random and known to nobody but this
launcher unless the caller supplies one, and which reaches tritonserver through a pipe, never
its command line (server/keyshim.py); a supervisor restarts (unloads, then loads) any model
whose Python stub process dies (Triton 2.51 itself only reports "Stub process ... is not
healthy" forever, and calls the model ready meanwhile).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytriton

import serving
from server.admin import ADMIN_HEADER, RESTRICTED, admin_headers
from server.keyshim import PLACEHOLDER, SecretPipe, build_shim

ROOT = Path(__file__).resolve().parents[1]
# Where assembled backends, the key shim and server logs go: build/ in a checkout; an installed
# aerec (ROOT is site-packages then) uses the user's cache instead of writing beside its code.
BUILD = (ROOT / "build" if (ROOT / "pyproject.toml").is_file()
         else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aerec")
WHEEL = Path(pytriton.__file__).parent / "tritonserver"
WHEEL_LIBS = WHEEL.parents[1] / "nvidia_pytriton.libs"
OUR_BACKENDS = Path(__file__).parent / "backends"
SERVING = Path(serving.__file__).resolve().parent   # the installed package, checkout or not

log = logging.getLogger(__name__)


def _install(src: Path, dst: Path) -> None:
    """Copy unless already identical; copy-then-rename so a running server's stub is never
    overwritten in place (that fails with 'Text file busy')."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def assemble_backends(dest: Path) -> Path:
    """backends/python (library, utils, the stub matching this Python) + backends/onnxruntime (with serving/)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = WHEEL / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"no Triton Python stub for Python {version} in {WHEEL}")
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _install(WHEEL / "backends" / "python" / f, dest / "python" / f)
    _install(stub, dest / "python" / "triton_python_backend_stub")
    for src in (OUR_BACKENDS / "onnxruntime").glob("*.py"):
        _install(src, dest / "onnxruntime" / src.name)
    # Its model.py imports serving.session_options from its own folder, as the fused model does.
    for src in SERVING.glob("*.py"):
        _install(src, dest / "onnxruntime" / "serving" / src.name)
    return dest


def server_environment(extra_libs: tuple[str, ...] = ()) -> dict[str, str]:
    """The variables tritonserver and its Python stubs need, to lay over os.environ:

    - PATH: the venv's bin first; the stub's embedded interpreter finds its packages (numpy,
      onnxruntime) through it.
    - LD_LIBRARY_PATH: the running interpreter's own libpython first (a stub built for "3.11"
      otherwise loads whichever libpython3.11 the system has, e.g. Debian's 3.11.2 under a
      3.11.7 venv: another patch release's interpreter with this one's standard library, and
      twice as slow per request as the running one here), then the wheel's bundled libraries
      (the copied stub loses its relative rpath to them), the caller's, then `extra_libs`.
    - PYTHONDONTWRITEBYTECODE: no __pycache__ in the repository (Triton would see a changed model)."""
    own = sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else None
    libs = [own, str(WHEEL_LIBS), os.environ.get("LD_LIBRARY_PATH"), *extra_libs]
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, libs)), "PYTHONDONTWRITEBYTECODE": "1"}


def free_ports(n: int, address: str = "127.0.0.1") -> list[int]:
    """`n` distinct TCP ports free on `address` right now (the OS's picks; another process may
    take one later). All `n` sockets stay bound until every port is picked: picked one at a time,
    the OS may hand out the same port twice, and a server given it for HTTP and gRPC exits."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((address, 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    """A TCP port free on loopback right now (the OS's pick; another process may take it later)."""
    return free_ports(1)[0]


def port_in_use(address: str, port: int, name: str = "TCP") -> None:
    """Raise ValueError when `port` on `address` is taken: a second server there would fail to
    bind while readiness checks answered from the first one, so it must not start at all."""
    with socket.socket() as s:
        # As a server binds: connections of a server that just stopped (TIME_WAIT) do not count,
        # a live listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            raise ValueError(f"{name} port {port} on {address} is already in use ({e.strerror}): "
                             f"another server runs there; choose another port") from None


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid`, from /proc (Linux); [] once it is gone."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def _stub_model(pid: int) -> str | None:
    """The model a live Python stub serves: its first argument is <repo>/<model>/<version>/<file>."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(argv) < 2 or not argv[0].endswith(b"triton_python_backend_stub"):
        return None
    return Path(argv[1].decode()).parents[1].name


def _state(pid: int) -> str | None:
    """A process's state letter ("Z": dead, waiting to be reaped), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@dataclass
class StubRestart:
    """One dead Python stub the supervisor replaced: its model, old pid, when it was seen and
    how long the reload took (seconds); `error` is the reload's failure, if any."""
    model: str
    pid: int
    detected_at: float      # time.monotonic() when the dead stub was seen
    reload_seconds: float
    error: str = ""
    server_restarted: bool = False   # the model's own restart hung, so the whole server was restarted


class StubSupervisor(threading.Thread):
    """Watches the server's Python stubs; a stub that died (left defunct: Triton reaps the ones
    it stops itself) gets its model reloaded through the admin API, which starts a new stub.

    A stub Triton stops (an unload, a new version) is defunct too for a moment: it exits after
    answering the finalize message, and the backend reaps it (waitpid) only after tearing down
    its queues. A tick landing in that moment once took the outgoing stub of a reload under load
    for a dead one and restarted its model, which failed every request for seconds. So a stub
    counts as dead only once it has stayed defunct for `grace` seconds; one that died really stays
    defunct for good, and is restarted that much later.

    Cheap on purpose: every tick reads one /proc file per known stub; finding new stubs means
    reading the children of every server thread (170 of them: ~3 ms of CPU), so that is done
    every `rescan_every` ticks and right after a model (re)load. Scanning everything 4 times a
    second stole ~3 ms bursts from the serving path, visible in the lone user's p99."""

    def __init__(self, server: "TritonServer", interval: float = 0.25, rescan_every: int = 16,
                 restart_timeout: float = 20.0, grace: float = 1.5):
        super().__init__(daemon=True, name="stub-supervisor")
        self.server, self.interval, self.rescan_every = server, interval, rescan_every
        self.restart_timeout, self.grace = restart_timeout, grace
        self.known: dict[int, str] = {}
        self.defunct_since: dict[int, float] = {}   # pid -> time.monotonic() it was first seen defunct
        # model -> (dead stub's pid, failed restarts so far, time.monotonic() of the next try)
        self.failed: dict[str, tuple[int, int, float]] = {}
        self._halt, self._rescan = threading.Event(), threading.Event()

    def rescan_soon(self) -> None:
        """A model was (re)loaded: learn its new stub at the next tick."""
        self._rescan.set()

    def scan(self, full: bool = True) -> bool:
        """Learn new stubs (`full`), restart dead known ones, forget reaped ones; False once the
        server is gone."""
        proc = self.server.process
        if proc is None or proc.poll() is not None:
            return False
        if full:
            for pid in child_pids(proc.pid):
                if pid not in self.known and (model := _stub_model(pid)):
                    self.known[pid] = model
        dead: dict[str, int] = {}
        now = time.monotonic()
        for pid in list(self.known):
            state = _state(pid)
            if state is None:        # reaped: Triton stopped this stub itself (unload, new version)
                del self.known[pid]
                self.defunct_since.pop(pid, None)
            elif state == "Z" and now - self.defunct_since.setdefault(pid, now) >= self.grace:
                del self.defunct_since[pid]
                dead.setdefault(self.known.pop(pid), pid)
        for model, (pid, attempt, due) in list(self.failed.items()):
            if due <= now and model not in dead:
                dead[model] = pid
        for model, pid in dead.items():  # once per model, however many of its stubs died
            self._restart(pid, model)
        return True

    def run(self) -> None:
        """The thread's loop: a cheap check every `interval` seconds, a full scan now and then."""
        tick = 0
        while not self._halt.wait(self.interval):
            tick += 1
            full = self._rescan.is_set() or tick % self.rescan_every == 0
            self._rescan.clear()
            if not self.scan(full):
                return

    def _restart(self, pid: int, model: str) -> None:
        """Unload, then load `model`: a new stub every time. A plain load is no new stub: Triton
        2.51 treats a load of a model whose files did not change as done (handing it the model's
        own config made it reload only on the first serve of a freshly written repository). While
        the model is unloaded, it and every ensemble using it report not ready (and requests get
        "has no available versions", which clients retry elsewhere); a failed load is tried again
        with backoff (1 s, 2 s ... 30 s), the model staying not ready meanwhile.

        An unload or load that does not answer within `restart_timeout` seconds restarts the
        whole server on the same ports: once in a full test run the unload of a killed stub's model
        never answered and the server later died (most likely the stub was killed holding the lock
        of its shared-memory message queue, which the backend then waits on for ever); nothing
        short of a new process clears that."""
        t0 = time.monotonic()
        attempt = self.failed.pop(model, (pid, 0, 0.0))[1]
        log.warning("Python stub %d of model %r died; restarting the model", pid, model)
        try:
            self.server.restart_model(model, timeout=self.restart_timeout)
            err, whole = "", False
        except TimeoutError as e:   # socket timeouts: the backend is stuck, not refusing
            log.error("restarting %r did not finish in %.0f s (%s); restarting the server", model,
                      self.restart_timeout, e)
            err, whole = self._restart_server(), True
        except OSError as e:
            if isinstance(getattr(e, "reason", None), TimeoutError):   # urllib wraps them
                log.error("restarting %r did not finish in %.0f s (%s); restarting the server", model,
                          self.restart_timeout, e)
                err, whole = self._restart_server(), True
            else:
                err, whole = str(e), False
                self.failed[model] = (pid, attempt + 1, time.monotonic() + min(30.0, 2.0 ** attempt))
                log.error("restarting %r failed (attempt %d; tried again in %.0f s): %s", model, attempt + 1,
                          min(30.0, 2.0 ** attempt), e)
        self.server.stub_restarts.append(StubRestart(model, pid, t0, time.monotonic() - t0, err, whole))

    def _restart_server(self) -> str:
        """Restart the server this supervisor watches (a new supervisor comes with it; this one
        stops at its next tick). Returns "" or the error that kept it from starting."""
        try:
            self.server.restart()
            return ""
        except (OSError, RuntimeError, TimeoutError) as e:
            log.error("restarting the server failed: %s", e)
            return f"server restart: {e}"

    def halt(self) -> None:
        """Stop the loop at its next tick."""
        self._halt.set()


@contextlib.contextmanager
def until_signalled(stop):
    """Run the block until it ends or Ctrl-C / SIGTERM (what service managers send) arrives,
    then call `stop()` either way; the previous SIGINT and SIGTERM handlers come back after."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class TritonServer:
    """`with TritonServer(repo) as server:` a ready server on free loopback ports.

    `admin_key`: the key for the restricted APIs (load/unload models, logging, trace, shared
    memory); None makes a random one only this object knows. `supervise`: reload models whose
    Python stub dies. `log`: the server's output; default build_dir/server-http<port>-grpc<port>.log.
    Ports left None (or 0) are free ones picked now; a given port that is taken raises ValueError."""

    def __init__(self, repository: Path, http_port: int | None = None, grpc_port: int | None = None,
                 address: str = "127.0.0.1", build_dir: Path | None = None, log: Path | None = None,
                 admin_key: str | None = None, supervise: bool = True, metrics_port: int | None = None):
        if admin_key is not None and (len(admin_key) < 16 or not admin_key.isascii() or "," in admin_key
                                      or ":" in admin_key or "=" in admin_key or not admin_key.isprintable()):
            raise ValueError("admin key: at least 16 printable ASCII characters, without ',', ':' or '='")
        self.admin_key = admin_key or secrets.token_urlsafe(32)
        for name, port in (("HTTP", http_port), ("gRPC", grpc_port), ("metrics", metrics_port)):
            if port:
                port_in_use(address, port, name)
        self.supervise, self.supervisor = supervise, None
        self.stub_restarts: list[StubRestart] = []
        self.repository = Path(repository).resolve()
        self.address = address
        # The ports left to the OS are picked together (six: three spare should it pick a given one).
        picked = iter(p for p in free_ports(6, address) if p not in (http_port, grpc_port, metrics_port))
        self.http_port = http_port or next(picked)
        self.grpc_port = grpc_port or next(picked)
        self.metrics_port = metrics_port or next(picked)
        self.build_dir = Path(build_dir or BUILD / "triton")
        # One log per server: several servers started from one checkout share build_dir, and a
        # shared name let each new server truncate the log of one still running. Two live
        # servers never hold the same ports.
        self.log = Path(log) if log else self.build_dir / f"server-http{self.http_port}-grpc{self.grpc_port}.log"
        self.process: subprocess.Popen | None = None
        self._restarting = threading.Event()

    @property
    def http_url(self) -> str:
        """host:port of the HTTP/REST endpoint."""
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"{self.address}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """host:port of the Prometheus metrics endpoint (GET /metrics)."""
        return f"{self.address}:{self.metrics_port}"

    def command(self) -> list[str]:
        """The tritonserver command line this object runs."""
        return [str(WHEEL / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={self.build_dir / 'backends'}",
                f"--http-address={self.address}", f"--http-port={self.http_port}",
                f"--grpc-address={self.address}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}",
                # Server readiness says "up and serving": Triton's strict readiness also reports
                # not ready while any model version is loading, i.e. for the whole of a reload
                # that never fails a request. Model readiness (/v2/models/<name>/ready, what the
                # SDK's healthy() also reads) follows outages: a model whose stub died is unloaded
                # until its new stub runs.
                "--strict-readiness=false", "--exit-timeout-secs=10",
                # Explicit control lets the supervisor and the admin reload models (new versions,
                # dead stubs); everything in the repository is loaded at start, as in the default mode.
                "--model-control-mode=explicit", "--load-model=*",
                # The key itself is never on the command line (ps shows it to every local user):
                # start() hands it over through a pipe, see server/keyshim.py.
                f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={PLACEHOLDER}",
                f"--grpc-restricted-protocol={RESTRICTED}:{ADMIN_HEADER}={PLACEHOLDER}"]

    def start(self, timeout: float = 120) -> "TritonServer":
        """Start tritonserver and wait until every model is ready (at most `timeout` seconds).
        Raises RuntimeError when the server exits first (with the end of its log) and
        TimeoutError when it is not ready in time (the server is stopped then)."""
        assemble_backends(self.build_dir / "backends")
        shim = build_shim(self.build_dir)   # ShimError (a RuntimeError) without a C compiler
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")   # a restarted server's log follows its predecessor's
        with SecretPipe(self.admin_key, shim) as key:
            env = dict(os.environ, **server_environment(), **key.env)
            self.process = subprocess.Popen(self.command(), stdout=self._logf, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, pass_fds=(key.fd,))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}; see {self.log}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            if self._key_refused():
                self.stop()
                raise RuntimeError(f"tritonserver refuses its own admin key: the key shim ({shim}) did not take "
                                   "effect (is LD_PRELOAD honoured?); the admin APIs are closed to everyone")
            if self.ready():
                if self.supervise:
                    self.supervisor = StubSupervisor(self)
                    self.supervisor.scan()  # every stub known before the first request
                    self.supervisor.start()
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s; see {self.log}")

    def ready(self) -> bool:
        """Whether the server answers /v2/health/ready with 200 and every model in its repository
        has a READY version."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                if r.status != 200:
                    return False
            index = json.loads(self._admin("POST", "/v2/repository/index", {}, timeout=5))
        except (OSError, ValueError):
            return False
        names = {m["name"] for m in index}
        return bool(names) and names == {m["name"] for m in index if m.get("state") == "READY"}

    def _key_refused(self) -> bool:
        """Whether the server is up but answers its own admin key with "restricted"."""
        try:
            self._admin("POST", "/v2/repository/index", {}, timeout=5)
        except OSError as e:
            return "restricted" in str(e).lower()
        return False

    def _admin(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> bytes:
        req = urllib.request.Request(f"http://{self.http_url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers=admin_headers(self.admin_key, "http"))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise OSError(f"{method} {path}: HTTP {e.code} {e.read().decode(errors='replace')}") from None

    def load_model(self, name: str, force: bool = False, timeout: float = 120) -> None:
        """(Re)load one model through the admin API: a new version is loaded beside the served
        one, which keeps answering until the new one is ready. Triton skips a model whose files
        did not change; `force` hands it the model's current config, which reloads it only where
        Triton sees a difference (not reliably: to get new stubs, use restart_model). Raises
        OSError with the server's message when the load fails."""
        body = None
        if force:
            config = self._admin("GET", f"/v2/models/{name}/config").decode()
            body = {"parameters": {"config": config}}
        self._admin("POST", f"/v2/repository/models/{name}/load", body, timeout)
        if self.supervisor:
            self.supervisor.rescan_soon()  # the new version runs in a new stub

    def restart_model(self, name: str, timeout: float = 120) -> None:
        """Unload `name`, then load it again: new stubs, the model (and any ensemble using it) not
        ready in between. Raises OSError with the server's message when either call fails."""
        self._admin("POST", f"/v2/repository/models/{name}/unload", {}, timeout)
        self._admin("POST", f"/v2/repository/models/{name}/load", None, timeout)
        if self.supervisor:
            self.supervisor.rescan_soon()

    def restart(self, timeout: float = 120) -> None:
        """Stop the server and start it again with the same repository, ports and admin key, so
        clients reconnect to the same addresses (the supervisor's last resort). Raises what
        `start` raises."""
        self._restarting.set()
        try:
            self.stop()
            self._swept = False
            self.start(timeout)
        finally:
            self._restarting.clear()

    def stop(self) -> None:
        """SIGTERM the server's process group (SIGKILL after 20 s), and any stub left behind."""
        if self.supervisor:
            self.supervisor.halt()
        if self.process and self.process.poll() is None:
            self._swept = True
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            # A stub the server was (re)starting as it stopped can outlive it, orphaned and
            # polling; stubs stay in the server's process group, so one signal clears them all.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.process and not getattr(self, "_swept", False):
            # The server died on its own (killed, crashed): its stubs may still be exiting. Once
            # only: the group's id may be reused after its last member is gone.
            self._swept = True
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "_logf", None):
            self._logf.close()

    def serve_forever(self, on_ready=None) -> None:
        """Start the server, call `on_ready(self)` once it is ready, and return when the server
        process ends or on Ctrl-C / SIGTERM (what service managers send), stopping it cleanly
        either way. The previous SIGINT and SIGTERM handlers are restored before returning."""
        with until_signalled(self.stop):
            self.start()
            if on_ready:
                on_ready(self)
            while self.process.poll() is None or self._restarting.is_set():
                time.sleep(0.5)
            if self.process.returncode:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}; see {self.log}:\n"
                                   + self.log.read_text(errors="replace")[-2000:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
