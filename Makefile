# ncvx-core developer targets. `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: install test test-all test-slow test-reference demo bench lint docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test]"

test: install
	$(PY) -m pytest -q -m "not slow and not gpu and not reference and not benchmark" tests

test-all: install
	$(PY) -m pytest -q tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

# PyGRANSO (AGPL, numpy<2) lives in its own environment, used only for cross-checks and benchmarks
test-reference:
	$(PYTHON) -m venv .venv-ref
	.venv-ref/bin/python -m pip install -q $(TORCH_PIN) "numpy<2" scipy osqp pygranso pytest hypothesis
	.venv-ref/bin/python -m pip install -q --no-deps -e .
	.venv-ref/bin/python -m pytest -q -m reference tests

# the adv part: the embedded digits CNN (trained on first use, ~10 s), 64 test digits, l-infinity,
# three attacks at two budgets plus minimal radii; about 2.5 minutes on a busy 2-core CPU
DEMO_ADV_FLAGS ?= --threat linf --eps 0.05 0.1 --n 64 --batch-size 32 --min-distortion \
	--restarts 1 --maxit 60 --restart-maxit 60 --min-restarts 1 --min-maxit 80 --apgd-iter 50 --threads 1

demo: install
	$(PY) -m ncvx_core.demo
	$(PY) -m adv evaluate --model default --data default $(DEMO_ADV_FLAGS) --out demo-report --overwrite
	@echo "Robustness report: demo-report/summary.md (plots: demo-report/*.png)"

bench: install
	$(PY) -m pip install -q -e ".[bench]" || true
	# torchattacks and adv-lib (optional baselines) declare torchvision, which would replace the CPU torch:
	# install them alone (bench_adv.py loads only adv-lib's FMN module, which needs neither)
	$(PY) -m pip install -q --no-deps torchattacks adv-lib || true
	$(PY) benchmarks/run_all.py

lint: install
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check ncvx_core adv tests benchmarks

docs:
	@echo "The documentation is Markdown under docs/ (start at docs/index.md); nothing to build."

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis demo-report
