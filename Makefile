# Entry points: `make demo` (set up + main job), `make test` (set up + test suite) and
# `make notebook` (set up + execute the teaching notebook, saved with its outputs).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Exact versions the suite was last run against; `make test` / `make demo` install with them.
CONSTRAINTS := constraints.txt
# torch is pinned here (pyproject says torch>=2.9) so pip takes the local CPU wheel.
TORCH  := torch==2.13.0
EXTRAS := .[dev,viz,hf,notebook]
# `make test-latest`: a separate venv with the newest releases (the drift alarm; not on CI).
LATEST := .venv-latest
# Extra pytest arguments, e.g. `make test-latest PYTEST_ARGS=tests/integrations`.
PYTEST_ARGS ?=

.PHONY: demo notebook test test-isa test-latest lint constraints venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) $(TORCH)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '$(EXTRAS)'
	touch $(STAMP)

# Trains the story's runs on every core (one worker process per core); prints how long it took.
demo: $(STAMP)
	$(PY) -m muonclip demo

# Runs notebooks/muonclip_story.ipynb top to bottom with nbclient (quick story, static figures
# instead of sliders so that the saved outputs render anywhere) and saves it with its outputs.
notebook: $(STAMP)
	$(PY) -m muonclip.story.notebook

# Needs no root. The report browser test needs Chromium: it skips without it, except on CI
# (CI=true), where it fails; .ci/run installs Chromium before calling this.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite under every CPU instruction-set cap this machine can imitate (native; AVX512-BF16
# without AMX where AMX exists; AVX2-only where AVX-512 exists). Not on CI: run it before a submission.
test-isa: $(STAMP)
	bash .ci/test-isa $(PYTEST_ARGS)

# Newest releases of every dependency (torch stays 2.13.0), no constraints: a failure here
# and not in `make test` means an upstream release broke us, before a fresh clone sees it.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager $(TORCH) -e '$(EXTRAS)'
	@$(LATEST)/bin/python -m pip freeze --exclude-editable \
		| grep -iE '^(torch|transformers|accelerate|numpy|tokenizers|matplotlib|pytest|hypothesis)==' \
		| sed 's/^/test-latest: /'
	$(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Rewrite constraints.txt from .venv after a deliberate upgrade (e.g. once `make test-latest` passes).
constraints: $(STAMP)
	{ sed -n '/^#/p' $(CONSTRAINTS); \
	  $(PIP) freeze --exclude-editable | grep -viE '^muonclip([=@ ]|$$)' | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	touch $(STAMP)

bench: $(STAMP)
	$(PY) benchmarks/optimizer_step.py

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
