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

# --- the one-shot GPU check (docs/gpu.md) -------------------------------------------------------
# `make gpu-bundle` HERE (with PyPI): the wheels the GPU machine lacks and the pulled models, as
# .whl/gpu-bundle/part-* (GPU_PART_MIB each) and SHA256SUMS. `make gpu-check` THERE (no internet,
# no venv): installs those wheels with pip --no-index into $(GPU_SITE), runs doctor, the GPU tests
# and bench/gpu.py, each with a timeout, and writes one Markdown report (every step's output and
# exit status; it goes on past a failed step and exits nonzero at the end if any failed).
GPU_PYTHON ?= python3
GPU_PART_MIB ?= 58
GPU_BUNDLE ?= /tmp/gpu-bundle/gpu-bundle
GPU_SITE ?= $(GPU_BUNDLE)/site
GPU_REPORT ?= $(if $(OUT),$(OUT)/gpu-report.md,$(CURDIR)/gpu-report.md)
# onnxruntime-gpu installed with --target looks for cuBLAS/cuDNN under $(GPU_SITE)/nvidia: point
# the loader at the nvidia-* wheels (PyTorch's) this Python already has, then $LD_LIBRARY_PATH.
GPU_NVIDIA_LIBS = $(shell $(GPU_PYTHON) scripts/gpu_check.py nvidia-libs 2>/dev/null)
GPU_ENV = PYTHONPATH=$(GPU_SITE):$(CURDIR) PATH=$(GPU_SITE)/bin:$$PATH STREAMGRAPH_CACHE=$(GPU_BUNDLE)/cache \
	LD_LIBRARY_PATH=$(GPU_NVIDIA_LIBS) PYTHONUNBUFFERED=1
GPU_STEP = $(GPU_PYTHON) scripts/gpu_check.py step --report $(GPU_REPORT)

.PHONY: gpu-bundle gpu-check

gpu-bundle: models
	$(BIN)/python scripts/gpu_bundle.py pack --out .whl/gpu-bundle --wheels .whl/gpu-wheels --part-mib $(GPU_PART_MIB)

gpu-check:
	$(GPU_ENV) $(GPU_PYTHON) scripts/gpu_check.py start --report $(GPU_REPORT) --bundle $(GPU_BUNDLE)
	-if $(GPU_PYTHON) -m pip --version >/dev/null 2>&1; then \
	  $(GPU_STEP) install 90 $(GPU_PYTHON) -m pip install --no-index --no-deps --upgrade --disable-pip-version-check \
	    --find-links $(GPU_BUNDLE)/wheels --target $(GPU_SITE) $(GPU_BUNDLE)/wheels/*.whl; \
	else $(GPU_STEP) install 90 $(GPU_PYTHON) scripts/gpu_check.py unpack-wheels $(GPU_BUNDLE)/wheels $(GPU_SITE); fi
	-$(GPU_ENV) $(GPU_STEP) probe 45 $(GPU_PYTHON) scripts/gpu_check.py probe
	-$(GPU_ENV) $(GPU_STEP) doctor 45 $(GPU_PYTHON) -m pipeline.cli doctor
	-$(GPU_ENV) $(GPU_STEP) --expect '[0-9]+ passed' pytest-gpu 240 \
	  $(GPU_PYTHON) -m pytest -m gpu tests/gpu -ra -v -p no:cacheprovider --durations=10
	-$(GPU_ENV) $(GPU_STEP) bench 120 $(GPU_PYTHON) bench/gpu.py --markdown --streams 1,8 --seconds 2
	$(GPU_PYTHON) scripts/gpu_check.py finish --report $(GPU_REPORT)
