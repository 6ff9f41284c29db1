"""Start and stop the embedded Triton server (the binary inside the nvidia-pytriton wheel).

No Docker, no GPU: the launcher assembles a backend directory of the project's own (the
wheel's Python backend plus the stub for this interpreter, and our Python-based `onnxruntime`
backend), binds to loopback, waits until the server is ready, and stops it cleanly.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytriton

ROOT = Path(__file__).resolve().parents[1]
WHEEL = Path(pytriton.__file__).parent / "tritonserver"
WHEEL_LIBS = WHEEL.parents[1] / "nvidia_pytriton.libs"
OUR_BACKENDS = Path(__file__).parent / "backends"


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
    """backends/python (library, utils, the stub matching this Python) + backends/onnxruntime."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = WHEEL / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"no Triton Python stub for Python {version} in {WHEEL}")
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _install(WHEEL / "backends" / "python" / f, dest / "python" / f)
    _install(stub, dest / "python" / "triton_python_backend_stub")
    for src in (OUR_BACKENDS / "onnxruntime").glob("*.py"):
        _install(src, dest / "onnxruntime" / src.name)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """`with TritonServer(repo) as server:` a ready server on free loopback ports."""

    def __init__(self, repository: Path, http_port: int | None = None, grpc_port: int | None = None,
                 address: str = "127.0.0.1", build_dir: Path | None = None, log: Path | None = None):
        self.repository = Path(repository).resolve()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = free_port()
        self.address = address
        self.build_dir = Path(build_dir or ROOT / "build" / "triton")
        self.log = Path(log) if log else self.build_dir / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    def command(self) -> list[str]:
        return [str(WHEEL / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={self.build_dir / 'backends'}",
                f"--http-address={self.address}", f"--http-port={self.http_port}",
                f"--grpc-address={self.address}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}",
                "--strict-readiness=true", "--exit-timeout-secs=10"]

    def start(self, timeout: float = 120) -> "TritonServer":
        assemble_backends(self.build_dir / "backends")
        env = dict(os.environ)
        # The Python stub finds packages (numpy, onnxruntime) through PATH: our venv comes first.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # The copied stub loses its relative rpath to the wheel's bundled libraries.
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(WHEEL_LIBS), env.get("LD_LIBRARY_PATH")]))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "wb")
        self.process = subprocess.Popen(self.command(), stdout=self._logf, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}; see {self.log}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s; see {self.log}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_logf", None):
            self._logf.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
