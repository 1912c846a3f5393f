# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The last file make_samples.py writes (after text.mp4): it stands for all of them.
SAMPLE := samples/av.mp4
# The last object sample photos.py writes (from Darknet's photos, Debian's darknet package).
OBJECT_SAMPLE := samples/crossing.mp4

.PHONY: install samples models demo test lint clean servers triton kserve

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

samples: $(SAMPLE) $(OBJECT_SAMPLE)

$(OBJECT_SAMPLE): samples/photos.py | $(VENV)/.installed
	$(BIN)/python samples/photos.py

$(SAMPLE): samples/make_samples.py samples/speech.flac samples/speech.json | $(VENV)/.installed
	$(BIN)/python samples/make_samples.py

models: install
	$(BIN)/streamgraph models pull

demo: install $(SAMPLE)
	$(BIN)/streamgraph run configs/text-detect.yaml --show 5

test: install samples servers
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(KSERVE_VENV) $(TORCHSERVE_VENV) $(OPENCV4_VENV) samples/photos samples/*.mp4 samples/text.json samples/av.json .pytest_cache .mypy_cache .ruff_cache

# --- real inference servers (tests/remote, the remote engines' demo) -----------------------------
# Each in a venv of its own, made once (the stamp file), with pinned versions: PyTriton needs
# numpy < 2, which neither the project nor KServe wants. servers/*.py run ONNX models in them.
# Changing a pin? `rm -rf` the venv (or `make clean`): the stamp does not know the pins.
TRITON_VENV ?= .venv-triton
KSERVE_VENV ?= .venv-kserve
TORCHSERVE_VENV ?= .venv-torchserve
# OpenCV 4's own Darknet loader, which OpenCV 5 dropped: the independent reference the YOLOv4-tiny
# converter (pipeline/darknet.py) is checked against in tests/integration/test_darknet.py.
OPENCV4_VENV ?= .venv-opencv4
OPENCV4_PACKAGES := "opencv-python-headless>=4.10,<5" numpy
SERVER_ORT := onnxruntime==1.32.0
TRITON_PACKAGES := nvidia-pytriton==0.7.0 "numpy<2" $(SERVER_ORT)
KSERVE_PACKAGES := kserve==0.21.0 $(SERVER_ORT)
# TorchServe (Java, from apt) runs servers/torchserve/tensor_handler.py, which needs ONNX Runtime,
# not torch; its worker imports torch only to spot torch.Tensor answers (tests/remote/test_torchserve.py
# gives it a stand-in: CPU torch is not on PyPI). PyYAML: the worker needs it and does not declare it.
TORCHSERVE_PACKAGES := torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml numpy $(SERVER_ORT)
TRITON_PORTS ?= --http-port 8000 --grpc-port 8001 --metrics-port 8002
KSERVE_PORTS ?= --http-port 8080 --grpc-port 8081
# The pulled ONNX file of a model card (make runs it when the recipe line runs, after the pull).
MODEL_FILE = $$($(BIN)/python scripts/model_file.py $(1))
OCR_MODELS = --model pp_ocrv4_det=$(call MODEL_FILE,pp-ocrv4-det) --model pp_ocrv4_rec=$(call MODEL_FILE,pp-ocrv4-rec)

servers: $(TRITON_VENV)/.installed $(KSERVE_VENV)/.installed $(TORCHSERVE_VENV)/.installed $(OPENCV4_VENV)/.installed

# One recipe for each server's venv: $(1) the venv, $(2) its packages (no commas: call splits on
# them). rm -rf first: a venv left half-made by an interrupted install is made again, not patched.
define server_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(1)/bin/python -m pip install --quiet --disable-pip-version-check $(2)
	touch $(1)/.installed
endef

$(TRITON_VENV)/.installed:
	$(call server_venv,$(TRITON_VENV),$(TRITON_PACKAGES))

$(KSERVE_VENV)/.installed:
	$(call server_venv,$(KSERVE_VENV),$(KSERVE_PACKAGES))

$(TORCHSERVE_VENV)/.installed:
	$(call server_venv,$(TORCHSERVE_VENV),$(TORCHSERVE_PACKAGES))

$(OPENCV4_VENV)/.installed:
	$(call server_venv,$(OPENCV4_VENV),$(OPENCV4_PACKAGES))

# A real Triton serving the OCR models, in the foreground (Ctrl-C stops it).
triton: install $(TRITON_VENV)/.installed
	$(BIN)/streamgraph models pull pp-ocrv4-det pp-ocrv4-rec
	$(TRITON_VENV)/bin/python servers/triton_serve.py $(OCR_MODELS) $(TRITON_PORTS)

# The same models on a real KServe ModelServer (v2 REST and gRPC, TF Serving's v1 REST format).
kserve: install $(KSERVE_VENV)/.installed
	$(BIN)/streamgraph models pull pp-ocrv4-det pp-ocrv4-rec
	$(KSERVE_VENV)/bin/python servers/kserve_serve.py $(OCR_MODELS) $(KSERVE_PORTS)

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
