# aerec: `make demo` and `make test` work on a fresh machine (they set themselves up).
VENV  := .venv
PY    := $(VENV)/bin/python
AEREC := $(VENV)/bin/aerec
STAMP := $(VENV)/.installed-stamp
ML100K := data/ml-100k/ml-100k.inter

.PHONY: setup test test-fast demo lint bench bench-scale bench-new-users bench-knobs bench-large bench-replicas bench-distributed bench-items bench-logs bench-batch bench-catalogue bench-rules perf perf-full gpu-check clean

setup: $(STAMP) $(ML100K)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import builder, torch, onnx, onnxruntime, tritonclient"
	@$(PY) -c "from perf.analyzer import check; check()"
	@touch $(STAMP)

$(ML100K): | $(STAMP)
	@$(PY) -m builder.data.fetch

# Two pytest-xdist workers, each file whole on one (tests/conftest.py); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -m "not gpu" -n $(TEST_WORKERS)

test-fast: setup
	$(PY) -m pytest -q -m "not gpu and not slow"

demo: setup
	$(AEREC) train --preset ease-values --out runs/demo-ease --quiet
	$(AEREC) train --preset deeprec --out runs/demo-deeprec --quiet
	$(AEREC) results runs/demo-ease runs/demo-deeprec
	$(AEREC) export runs/demo-ease --precision fp32
	$(AEREC) export runs/demo-deeprec --precision fp32
	$(AEREC) repository runs/demo-ease --rating-model runs/demo-deeprec --out runs/demo-repository
	$(PY) examples/demo_serve.py runs/demo-repository

lint: setup
	$(VENV)/bin/ruff check builder perf benchmarks tests scripts server client cli examples serving model_repository

bench: setup
	$(PY) -m benchmarks.bench_train

bench-scale: setup
	$(PY) -m benchmarks.bench_scale

bench-knobs: setup
	$(PY) -m benchmarks.bench_knobs

bench-large: setup
	$(PY) -m benchmarks.bench_large

bench-distributed: setup
	$(PY) -m benchmarks.bench_distributed --nproc 1,2 --sweep 60000,120000,240000 --steps 200

bench-new-users: setup
	$(PY) -m benchmarks.bench_new_users

bench-replicas: setup
	$(PY) -m benchmarks.bench_replicas

bench-items: setup
	$(PY) -m benchmarks.bench_items

bench-logs: setup
	nice $(PY) -m benchmarks.bench_logs

bench-batch: setup
	$(PY) -m benchmarks.bench_batch --out runs/bench-batch
	$(PY) -m benchmarks.bench_batch --out runs/bench-batch --served ml100k,csr:5000 --rss-run-users 1000000
	nice $(PY) -m benchmarks.bench_batch --out runs/bench-batch --rss-users 10000,100000,300000,1000000 --chunk-sizes 1024

bench-catalogue: setup
	nice $(PY) -m benchmarks.bench_catalogue

bench-rules: setup
	$(PY) -m benchmarks.bench_rules --pairs 8

perf: setup
	$(AEREC) perf

perf-full: setup
	$(AEREC) perf --full

gpu-check: setup
	$(PY) scripts/gpu_check.py --out runs/gpu-check.json

clean:
	rm -rf runs build
