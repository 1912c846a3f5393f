# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The last file make_samples.py writes (after text.mp4): it stands for all of them.
SAMPLE := samples/av.mp4

.PHONY: install samples models demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

samples: $(SAMPLE)

$(SAMPLE): samples/make_samples.py samples/speech.flac samples/speech.json | $(VENV)/.installed
	$(BIN)/python samples/make_samples.py

models: install
	$(BIN)/streamgraph models pull

demo: install samples
	$(BIN)/streamgraph run configs/text-detect.yaml

test: install samples
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) samples/*.mp4 samples/text.json samples/av.json .pytest_cache .mypy_cache .ruff_cache
