"""EASE's memory guard against what a fit really takes: peak RSS measured in a fresh process."""
import subprocess
import sys
from pathlib import Path

import pytest

from builder.config import TrainConfig
from builder.models.ease import check_ease_memory, ease_fit_bytes, ease_max_items
from builder.presets import preset
from builder.train import train

ROOT = Path(__file__).resolve().parents[2]

# Fit EASE on N items in a process of its own; print the growth of its peak RSS (bytes) from its
# RSS just before the model is made. VmHWM, not ru_maxrss: ru_maxrss carries the parent's RSS
# across fork and exec, so under pytest it starts above this process's own baseline.
PEAK = """
import sys
import numpy as np, scipy.sparse as sp
from builder.models.ease import EASE
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
n, users = int(sys.argv[1]), 500
rng = np.random.default_rng(0)
rows = np.repeat(np.arange(users), 20)
X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, rng.integers(0, n, len(rows)))), shape=(users, n))
base = status("VmRSS:")
EASE(n, max_gb=100).fit(X, 300.0)
print(status("VmHWM:") - base)
"""


@pytest.mark.slow
def test_guard_budgets_for_the_fits_measured_peak():
    n = 3000
    out = subprocess.run([sys.executable, "-c", PEAK, str(n)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    peak = int(out.stdout.split()[-1])
    print(f"\nEASE fit on {n:,} items: peak RSS growth {peak / 1e6:.0f} MB = {peak / n**2:.1f} bytes per item^2")
    # The guard covers the real peak, and is not far above it (the float32 B alone, the old
    # budget, is a ninth of it).
    assert 0.8 * ease_fit_bytes(n) <= peak <= ease_fit_bytes(n)


def test_refusal_names_the_peak_and_the_catalogue_that_fits():
    fits = ease_max_items(4.0)
    check_ease_memory(fits, 4.0)          # the named count is accepted ...
    with pytest.raises(ValueError) as refused:
        check_ease_memory(fits + 1, 4.0)  # ... and one more item is not
    message = str(refused.value)
    assert f"fits at most {fits:,} items" in message and "17 bytes per item^2 + 40 MB" in message
    assert f"peaks at {ease_fit_bytes(fits + 1) / 1e9:.2f} GB" in message
    with pytest.raises(ValueError, match=r"17,770 x 17,770 .* peaks at 5\.41 GB .*ease_max_gb=4 GB"
                                         r".*at most 15,262 items.*train ease-lowrank.*--preset ease-lowrank"
                                         r".*--preset elsa.*raise ease_max_gb to 5\.5\b"):
        check_ease_memory(17770, 4.0)


def test_training_refuses_before_any_work(u1):
    config = TrainConfig(device="cpu").updated(**{**preset("ease"), "ease_max_gb": 0.05})
    with pytest.raises(ValueError, match=r"1,682 x 1,682 .*0\.09 GB.*ease_max_gb=0\.05 GB.*766 items"):
        train(config, u1, progress=False)


# Factorise a 16,000 x 16,000 SPD matrix as EASE's inversion does; print the factor's entries
# that the 2 x 2 block [[10, 2], [2, 10]] sets, and whether the factor is in the input's memory.
FACTORISE = """
import numpy as np
from builder.models.ease import cholesky_in_place
n = 16_000
G = np.eye(n) * 10.0
G[0, 1] = G[1, 0] = 2.0
L = cholesky_in_place(G)
print(float(L[0, 0]), float(L[1, 0]), float(L[1, 1]), float(L[5, 5]), np.shares_memory(L.numpy(), G))
"""


@pytest.mark.slow  # about 25 s and 2 GB on 2 cores
def test_a_netflix_sized_factorisation_runs_to_the_end():
    """scipy's threaded OpenBLAS dpotrf killed the process with a segmentation fault from about
    16,000 items on (docs/reliability.md); the Cholesky factorisation EASE inverts by must get
    through that size, in a process of its own so that a crash is a failed test, not a lost
    pytest worker. (The inversion from the factor, cholesky_inverse, takes twice as long again.)"""
    out = subprocess.run([sys.executable, "-c", FACTORISE], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    l00, l10, l11, l55, in_place = out.stdout.split()
    # [[10, 2], [2, 10]] = L L^T: L = [[sqrt(10), 0], [2 / sqrt(10), sqrt(10 - 0.4)]]
    assert float(l00) == pytest.approx(10 ** 0.5) and float(l10) == pytest.approx(2 / 10 ** 0.5)
    assert float(l11) == pytest.approx(9.6 ** 0.5) and float(l55) == pytest.approx(10 ** 0.5)
    assert in_place == "True"
