# Two commands: `make demo` (set up + segment the sample image) and `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?=

.PHONY: demo test bench card build lint typecheck pytest gpu-check gpu-pack clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python pyproject.toml setup.py hemoseg_edge/_native.cpp
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml setup.py hemoseg_edge/_native.cpp
	$(BIN)/pip install -q -e ".[dev,train,openvino,nncf,service,http,archive,engines]"
	$(BIN)/python tools/install_trt_stubs.py
	touch $@ $(VENV)/.runtime

## demo: runtime-only venv, then segment the sample image into out/demo (exit 4 = flagged, ok)
demo: $(VENV)/.runtime
	$(BIN)/hemoseg-edge segment examples/IDRiD_55.jpg --out out/demo $(if $(MODEL),--model $(MODEL)) || [ $$? -eq 4 ]
	@echo "see out/demo/IDRiD_55_overlay.jpg, IDRiD_55_mask.png, IDRiD_55.json, report.csv"

## build: CUDA preprocessing kernel (host library always; fatbin when nvcc is present)
build:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j2

lint: $(VENV)/.dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev
	$(BIN)/python -m mypy --config-file mypy.ini

pytest: $(VENV)/.dev build
	HEMOSEG_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q

## system-deps: Debian packages the tests use (Orthanc, the PACS of tests/test_pacs.py; headless
## Chromium for tests/test_html_report.py); once, only the missing ones, only as root with
## apt-get, skipped quietly when installed or not possible
system-deps:
	@need=""; command -v Orthanc >/dev/null 2>&1 || need="$$need orthanc"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	if [ -z "$$need" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$need \
	  || echo "system-deps: could not install$$need; the tests that need them will skip"; \
	fi

## test: Debian packages, dev venv, kernel build, lint, TensorRT/pycuda type check, all tests
test: system-deps lint typecheck pytest

## gpu-check: on an NVIDIA GPU, every GPU test plus the kernel's parity/speed and TensorRT
## parity, printing what was proved; without a GPU it lists what it would prove and what is
## missing (GPU_CHECK_ARGS=--dry-run: only that, exit 0)
GPU_CHECK_ARGS ?=
gpu-check: $(VENV)/.dev build
	$(BIN)/python tools/gpu_check.py $(GPU_CHECK_ARGS)

## gpu-pack: what a lent GPU machine's calls carry (.gpu/, ignored by git): .gpu/data, the
## train+val images preprocessed at GPU_HW (training.pack, 47 MB at 1440 x 1472: with the tree
## and the wheels 61 MiB of the 64 a call carries; 1536 x 1568 would not fit); .gpu/check,
## 9 IDRiD test + 3 DIARETDB1 photographs and the kernel's fatbin for gpu-check; .gpu/wheels,
## Keras and simplejpeg for its Python 3.12. tools/gpu_train.sh and tools/gpu_check_device.sh
## say how to run them
GPU_HW ?= 1440 1472
GPU_WHEELS := keras==3.15.1 namex==0.1.0 optree==0.20.0 simplejpeg==1.9.0
DATA ?= ../shared/data
gpu-pack: $(VENV)/.dev build
	$(BIN)/python -m training.pack --input-hw $(GPU_HW) --out .gpu/data
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  -d .gpu/wheels $(GPU_WHEELS)
	mkdir -p .gpu/check/idrid/images/test .gpu/check/diaretdb1/ddb1_fundusimages
	cp $(DATA)/idrid/images/test/IDRiD_5[5-9].jpg $(DATA)/idrid/images/test/IDRiD_6[0-3].jpg \
	  .gpu/check/idrid/images/test/
	cp $(DATA)/diaretdb1/ddb1_fundusimages/image00[134].png .gpu/check/diaretdb1/ddb1_fundusimages/
	cp build/hemoseg_preprocess.fatbin .gpu/check/

## bench: full benchmark suite, then regenerate BENCHMARKS.md
bench: $(VENV)/.dev build
	$(BIN)/python -m pytest benchmarks -q --benchmark-json=benchmarks/results.json
	$(BIN)/python benchmarks/report.py benchmarks/results.json

## card: re-measure every number in engines/MODEL_CARD.md (v7-v1: test set, DIARETDB1, precisions)
card: $(VENV)/.dev
	for v in v7:hemoseg_mnv2_v7 v6:hemoseg_mnv2_v6 v4:hemoseg_mnv2_v4 v3:hemoseg_mnv2_v3 v2:hemoseg_mnv2_v2 v5:hemoseg_unet_v5 v1:hemoseg_unet_v1; do n=$${v%%:*}; m=$${v#*:}; \
	  $(BIN)/python -m training.evaluate --model engines/$$m.onnx --out engines/eval_$$n.json && \
	  $(BIN)/python -m training.quantize_report --fp32 engines/$$m.onnx \
	    --fp16 engines/$${m}_fp16.onnx --int8 engines/$${m}_int8.onnx \
	    --out engines/quantize_$$n.json || exit 1; done
	$(BIN)/python -m training.model_card \
	  --model v7=engines/eval_v7.json,engines/quantize_v7.json \
	  --model v6=engines/eval_v6.json,engines/quantize_v6.json,engines/train_v6 \
	  --model v4=engines/eval_v4.json,engines/quantize_v4.json,engines/train_v3 \
	  --model v3=engines/eval_v3.json,engines/quantize_v3.json,engines/train_v3 \
	  --model v2=engines/eval_v2.json,engines/quantize_v2.json,engines/train_v2 \
	  --model v5=engines/eval_v5.json,engines/quantize_v5.json,engines/train_v5 \
	  --model v1=engines/eval_v1.json,engines/quantize_v1.json

clean:
	rm -rf build out .pytest_cache
