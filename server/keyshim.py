"""Hand a secret (the admin key) to a program that reads it only from its argv, without the
secret ever being on a command line: /proc/<pid>/cmdline, which `ps` shows, is world-readable.

tritonserver 2.51 takes restricted-API keys only as `--http-restricted-api=APIS:HEADER=KEY`
arguments. So the launcher puts a placeholder there and starts the program with a small shared
object in LD_PRELOAD. Its constructor (glibc calls ELF constructors with argc, argv and envp, the
very argv array main() gets) reads the key from an inherited pipe named by AEREC_SECRET_FD,
closes it, and points every argument holding the placeholder at a heap copy with the key in its
place. /proc/<pid>/cmdline reads the process's original argument memory, which still holds the
placeholder; main() sees the key. The constructor also removes AEREC_SECRET_FD and LD_PRELOAD
from the environment (LD_PRELOAD goes back to what the caller had), so the program's children
(Triton's Python stubs) get neither.

The placeholder contains a control character that no HTTP header or gRPC metadata value can
carry: were the shim not loaded, no request could match it (the admin APIs stay closed).

The shim is compiled from the C source below with the machine's C compiler (`CC`, else gcc or
cc) into the build folder, once per source version. Without a compiler there is no way to keep
the key off the command line: `build_shim` raises ShimError saying so (nothing falls back to
putting the key on the command line).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

FD_VARIABLE = "AEREC_SECRET_FD"
PLACEHOLDER = "\x01aerec-secret-from-fd\x01"   # \x01: no HTTP header or gRPC metadata carries it

SOURCE = r"""
/* aerec: replace a placeholder in argv with a secret read from an inherited fd (see keyshim.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char placeholder[] = "%(placeholder)s";

__attribute__((constructor)) static void aerec_secret_from_fd(int argc, char **argv, char **envp) {
    (void)envp;
    const char *name = getenv("%(variable)s");
    if (name == NULL) return;
    int fd = atoi(name);
    static char secret[4096];
    size_t n = 0;
    ssize_t got;
    while (n < sizeof secret - 1 && (got = read(fd, secret + n, sizeof secret - 1 - n)) > 0) n += (size_t)got;
    close(fd);
    while (n > 0 && (secret[n - 1] == '\n' || secret[n - 1] == '\r')) n--;
    secret[n] = '\0';
    unsetenv("%(variable)s");
    /* the children get the LD_PRELOAD the caller had, without this shim */
    const char *rest = getenv("%(variable)s_PRELOAD");
    if (rest != NULL && rest[0] != '\0') setenv("LD_PRELOAD", rest, 1); else unsetenv("LD_PRELOAD");
    unsetenv("%(variable)s_PRELOAD");
    if (n == 0) {
        fprintf(stderr, "aerec secret shim: nothing to read on fd %%d\n", fd);
        _exit(78);
    }
    size_t plen = strlen(placeholder);
    for (int i = 1; i < argc; i++) {
        char *at = strstr(argv[i], placeholder);
        if (at == NULL) continue;
        size_t before = (size_t)(at - argv[i]);
        char *arg = malloc(strlen(argv[i]) - plen + n + 1);
        if (arg == NULL) _exit(71);
        memcpy(arg, argv[i], before);
        memcpy(arg + before, secret, n);
        strcpy(arg + before + n, at + plen);
        argv[i] = arg;   /* main() reads this; /proc/<pid>/cmdline still shows the placeholder */
    }
    memset(secret, 0, sizeof secret);
}
""" % {"placeholder": PLACEHOLDER.replace("\x01", "\\001"), "variable": FD_VARIABLE}


class ShimError(RuntimeError):
    """The shim cannot be built (no C compiler, or it failed to compile)."""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_shim(build_dir: Path) -> Path:
    """The compiled shim under `build_dir` (built now if missing: about 0.1 s). Raises ShimError
    when no C compiler is found or compiling fails (the compiler's message included)."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    so = Path(build_dir) / f"aerec-secret-shim-{digest}.so"
    if so.is_file():
        return so
    cc = _compiler()
    if cc is None:
        raise ShimError("no C compiler (gcc or cc; or set CC): aerec compiles a small LD_PRELOAD shim that hands "
                        "tritonserver its admin key without putting it on the command line (where every local "
                        "user can read it); install one, e.g. `apt-get install gcc`")
    so.parent.mkdir(parents=True, exist_ok=True)
    unique = f"{os.getpid()}.{threading.get_ident()}"   # replicas start in threads of one process
    src = so.with_name(f".{so.stem}.{unique}.c")
    tmp = so.with_name(f".{so.name}.{unique}")
    src.write_text(SOURCE)
    try:
        r = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise ShimError(f"compiling {src} with {cc} failed:\n{r.stderr[-2000:]}")
        os.replace(tmp, so)   # atomic: servers started at once never load a half-written file
    finally:
        src.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return so


class SecretPipe:
    """A pipe holding `secret` for one child: `env` (to lay over the child's environment) and
    `fd` (for Popen's pass_fds); close() after Popen. Usage:

        with SecretPipe(key, shim) as p:
            subprocess.Popen(argv_with_PLACEHOLDER, env=dict(os.environ, **p.env), pass_fds=(p.fd,))
    """

    def __init__(self, secret: str, shim: Path):
        data = secret.encode() + b"\n"
        if len(data) > 4000:
            raise ValueError("secret longer than 4000 bytes")
        self.fd, write = os.pipe()      # both ends non-inheritable: only pass_fds hands it on
        try:
            os.write(write, data)       # far below a pipe's buffer: never blocks
        finally:
            os.close(write)
        rest = os.environ.get("LD_PRELOAD", "")
        self.env = {FD_VARIABLE: str(self.fd), f"{FD_VARIABLE}_PRELOAD": rest,
                    "LD_PRELOAD": " ".join(filter(None, [str(shim), rest]))}

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "SecretPipe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
