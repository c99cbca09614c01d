# Two entry points: `make demo` (set up + main job) and `make test` (set up + test suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench clean

venv: $(STAMP)

# torch is pinned here only (pyproject says torch>=2.9) so pip takes the local CPU wheel.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,viz,hf]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m muonclip demo

test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "warning: could not install chromium (needs root); the report browser test skips locally and fails on CI"
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/optimizer_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
