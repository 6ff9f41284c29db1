"""The LD_PRELOAD shim that hands tritonserver its admin key without a command line showing it:
compiled with the machine's C compiler and run in a real child process (a shell, which prints
the argument main() got and the command line /proc shows)."""
import os
import subprocess

import pytest

from server.keyshim import FD_VARIABLE, PLACEHOLDER, SecretPipe, ShimError, build_shim

SECRET = "shim-test-secret-0123456789"
SHOW = ('printf "%s\\n" "$1"; tr "\\000" " " < /proc/$$/cmdline; '
        'printf "\\n%s\\n%s" "${LD_PRELOAD-unset}" "$(env | grep -c AEREC)"')


def test_child_sees_the_secret_its_command_line_does_not(tmp_path):
    shim = build_shim(tmp_path)
    assert build_shim(tmp_path) == shim, "built once, then reused"
    with SecretPipe(SECRET, shim) as pipe:
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        r = subprocess.run(["/bin/sh", "-c", SHOW, "sh", f"--key=api:header={PLACEHOLDER}"], env=dict(env, **pipe.env),
                           pass_fds=(pipe.fd,), capture_output=True, text=True, timeout=30)
    argument, cmdline, preload, variables = r.stdout.split("\n")
    assert argument == f"--key=api:header={SECRET}"        # what the program parses
    assert SECRET not in cmdline and "aerec-secret-from-fd" in cmdline   # what ps shows
    assert preload == "unset" and variables == "0", "the child's own children get neither the shim nor the fd"


def test_without_the_pipe_the_placeholder_stays(tmp_path):
    """Fail-closed: the placeholder holds \\x01, which no HTTP header or gRPC metadata carries."""
    assert "\x01" in PLACEHOLDER
    r = subprocess.run(["/bin/sh", "-c", 'printf "%s" "$1"', "sh", PLACEHOLDER], capture_output=True, text=True,
                       env=dict(os.environ, LD_PRELOAD=str(build_shim(tmp_path))))
    assert r.stdout == PLACEHOLDER and FD_VARIABLE not in os.environ


def test_no_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # no gcc, no cc
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(ShimError, match="no C compiler.*apt-get install gcc"):
        build_shim(tmp_path / "build")
