# Multitune — the two commands are `make run` and `make test`; the rest are their steps.
SHELL := /bin/bash
CARGO ?= cargo
MODELS ?= models
BIN_DEBUG := target/debug/multitune
BIN_RELEASE := target/release/multitune

.PHONY: run build-all cli-demo test test-build test-run test-stress test-deps browser-deps cluster-deps model build build-release ui ui-tools demo-data demo bench bench-sizes bench-merges bench-setup cuda-toolkit build-cuda test-cuda gpu-bundle fmt lint clean

## run: set up, build, and start Multitune on http://127.0.0.1:3000 with the default
## model and the demo tasks (imported on first start). DATA keeps datasets and runs.
## Where the NVIDIA driver sees a GPU (`nvidia-smi -L` lists one) it builds and starts
## the CUDA build instead (see build-cuda) and the jobs run on GPU 0; MULTITUNE_GPU=0|1
## forces either. Without a driver nothing more is checked or built.
DATA ?= data
GPU := $(if $(MULTITUNE_GPU),$(MULTITUNE_GPU),$(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo 1 || echo 0))
RUN_DIR := $(if $(filter 1,$(GPU)),target/cuda/release,target/release)
run: build-all
	@if [ "$(GPU)" = 1 ]; then echo "GPU: $$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader -i 0 2>/dev/null || echo 'none seen by the driver') - starting the CUDA build (MULTITUNE_GPU=0 for the CPU one)"; \
	else echo "No GPU seen - starting the CPU build (MULTITUNE_GPU=1 for the CUDA one)"; fi
	$(RUN_DIR)/multitune --models-dir $(MODELS) fetch-model
	$(RUN_DIR)/multitune-server --data-dir $(DATA) --models-dir $(MODELS) --demo assets/demo --dist dist

## build-all: the binaries (build-release, or build-cuda with a GPU) and the dashboard
## (ui, its lines marked [dashboard]) built at the same time, the dashboard at a lower
## priority: the binaries' long chain of crates (gemm, candle, the engine, the server)
## keeps the CPU, and the dashboard takes what that chain leaves idle. Their profiles
## lock apart, so neither waits for the other's lock.
build-all:
	@{ nice -n 10 $(MAKE) --no-print-directory ui 2>&1 | sed -u 's/^/[dashboard] /'; exit $${PIPESTATUS[0]}; } & ui=$$!; \
	$(MAKE) --no-print-directory $(if $(filter 1,$(GPU)),build-cuda,build-release); built=$$?; \
	wait $$ui || { echo "the dashboard did not build (make ui says why)"; exit 1; }; exit $$built

## cli-demo: the CLI tour: score the base model, fine-tune on sentiment, generate.
cli-demo: build-release
	$(BIN_RELEASE) --models-dir $(MODELS) fetch-model
	@echo "== the base model on the four demo tasks (held-out) =="
	$(BIN_RELEASE) --models-dir $(MODELS) eval --model default --data assets/demo/eval/*.jsonl
	@echo "== fine-tuning a LoRA adapter (rank 8, all linear layers) on the sentiment task =="
	$(BIN_RELEASE) --models-dir $(MODELS) train --model default --data assets/demo/sentiment.jsonl \
		--eval-data assets/demo/eval/sentiment.jsonl --out runs/demo --steps 30 --lr 1e-3 --checkpoint-every 10 \
		$$( [ -f runs/demo/checkpoint.safetensors ] && echo --resume )
	@echo "== the tuned adapter answering =="
	$(BIN_RELEASE) --models-dir $(MODELS) generate --model default --adapter runs/demo \
		--prompt $$'Classify the sentiment of this review as positive or negative.\nReview: The hotel was not lovely.'

## test: everything CI checks (fetches the default model and builds the dashboard first;
## installs, where missing, what the tests start: see test-deps).
## In the release profile with the features `make run` builds with, so the dependency
## graph `make run` compiled is compiled once for both; the dashboard's native tests run
## apart and without Leptos (its `app` feature): they test its plain functions, and
## Leptos's dependencies would change features the server's graph shares.
test: test-build
	@$(MAKE) --no-print-directory test-run

## test-build: everything `test-run` needs, built: the model, the dashboard, the test
## binaries; test-deps install (where missing) while the tests compile.
test-build:
	@$(MAKE) --no-print-directory build-all GPU=0
	@$(MAKE) --no-print-directory model
	@$(MAKE) --no-print-directory test-deps & deps=$$!; \
	$(CARGO) test --release --workspace --exclude multitune-ui --no-run && \
	$(CARGO) test --release -p multitune-ui --no-default-features --no-run; built=$$?; \
	wait $$deps || { echo "test-deps failed"; exit 1; }; exit $$built

## test-run: the suite, built (every test binary runs even when one fails).
test-run:
	@$(CARGO) test --release --no-fail-fast --workspace --exclude multitune-ui; ws=$$?; \
	$(CARGO) test --release -p multitune-ui --no-default-features; ui=$$?; \
	[ $$ws = 0 ] && [ $$ui = 0 ]

## test-stress: the suite on a slow and a fast machine: test-run on one core, beside a
## CPU hog, then plainly three times (scripts/test-stress.sh; logs and a summary in
## target/test-stress/). About 40 minutes on a 2-core machine.
test-stress: test-build
	scripts/test-stress.sh

## test-deps: what the tests start and drive, installed where missing (apt needs root, as
## CI has): the distributed mode's (cluster-deps) and the browser test's (browser-deps).
## One after the other: two apt-get installs at once would fight over dpkg's lock.
test-deps: cluster-deps browser-deps

## browser-deps: Debian's chromium and chromium-driver, which the browser test drives.
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver || \
		  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; }; }

## cluster-deps: what the distributed mode's tests start: PostgreSQL's server programs
## (Debian's `postgresql`, 15 on bookworm; installing needs root, as CI has) for a private
## cluster, and an S3-compatible server (PyPI's moto[server], into MOTO_VENV) for the
## s3:// artifacts; each skipped when present.
MOTO_VENV ?= $(HOME)/.cache/multitune/moto-venv
cluster-deps:
	@python3 -c 'import ensurepip' 2>/dev/null || \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv || \
		  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; }; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql || \
		  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; }; }
	@[ -x $(MOTO_VENV)/bin/moto_server ] || { python3 -m venv $(MOTO_VENV) && \
		$(MOTO_VENV)/bin/pip install -q "moto[server]==5.2.5"; }

## model: the default model (SmolLM2-135M-Instruct GGUF) into $(MODELS)/, skipped when
## present; by the release binary `make run` builds too.
model: build-release
	$(BIN_RELEASE) --models-dir $(MODELS) fetch-model

build:
	$(CARGO) build -p multitune-cli -p multitune-server

## ui-tools: what building the dashboard needs: the wasm32 target (added when missing)
## and tools/ui-bindgen, wasm-bindgen's library at the Cargo.lock version behind a small
## command (its own workspace; unoptimised: it runs for a second per build), built into
## $(TOOLS_DIR). No `cargo install`: the wasm-bindgen CLI's test runner, server and
## downloader made up about half of its compile work.
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/ {getline; gsub(/"/, "", $$3); print $$3}' Cargo.lock)
TOOLS_DIR ?= $(or $(CARGO_TARGET_DIR),target)/tools
UI_BINDGEN := $(abspath $(TOOLS_DIR))/debug/ui-bindgen
ui-tools:
	@rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@grep -q 'wasm-bindgen-cli-support = "=$(WASM_BINDGEN_VERSION)"' tools/ui-bindgen/Cargo.toml || \
		{ echo "tools/ui-bindgen/Cargo.toml must pin wasm-bindgen-cli-support = \"=$(WASM_BINDGEN_VERSION)\" (the Cargo.lock version of wasm-bindgen)"; exit 1; }
	$(CARGO) build --locked --manifest-path tools/ui-bindgen/Cargo.toml --target-dir $(TOOLS_DIR)

## ui: build the dashboard into dist/ (scripts/build-ui.py: cargo in the `ui` profile,
## ui-bindgen, content-hashed file names; nothing is downloaded).
ui: ui-tools
	UI_BINDGEN=$(UI_BINDGEN) scripts/build-ui.py

build-release:
	$(CARGO) build --release -p multitune-cli -p multitune-server

## demo-data: regenerate assets/demo (byte-identical; a test checks it).
demo-data: build
	$(BIN_DEBUG) demo-data --out assets/demo

## demo: every strategy on the default model and the demo suite, scored on all 100
## held-out examples per task (budget sized for a 2-core machine; 14 minutes measured
## 2026-12-01 on a fast one; 17–19 minutes on a slower one on 2026-12-02, after later cuts),
## into runs/demo-compare.
demo: build-release
	$(BIN_RELEASE) --models-dir $(MODELS) fetch-model
	$(BIN_RELEASE) --models-dir $(MODELS) compare --model default --tasks assets/demo/*.jsonl --strategies all \
		--budget-tokens 16000 --lr 1e-3 --out runs/demo-compare

## build-cuda: the CLI and server with candle's CUDA backend, into target/cuda/release
## (its own target dir: the CPU binaries stay as they are). nvcc, the CUDA 13.0 headers and
## libraries (cuBLAS, cuRAND, NVRTC) are those of a toolkit already here ($CUDA_ROOT, or
## nvcc on the PATH), else they come from PyPI into CUDA_VENV (Debian's main archive has none); scripts/cuda-link.sh adds the unversioned library names and a stub of the
## driver's libcuda for the link, so this builds on a machine without a GPU; at run time the
## binaries find the toolkit libraries through their rpath and the real driver's libcuda.
## CUDA_COMPUTE_CAP is the card's (90: H100/H200). The GPU is then picked by --device auto.
CUDA_VENV ?= $(HOME)/.cache/multitune/cuda-venv
CUDA_COMPUTE_CAP ?= 90
CUDA_LINK = $(HOME)/.cache/multitune/cuda-link
# A CUDA toolkit already here: $CUDA_ROOT, or the one whose nvcc is on the PATH; else PyPI's.
CUDA_SYSTEM := $(or $(CUDA_ROOT),$(patsubst %/bin/nvcc,%,$(shell command -v nvcc 2>/dev/null)))
# cargo with the toolkit on the paths, the link directory and the rpath.
CUDA_CARGO = cuda=$(if $(CUDA_SYSTEM),$(CUDA_SYSTEM),$$(echo $(CUDA_VENV)/lib/python3*/site-packages/nvidia/cu13)) && \
	lib=$$cuda/lib; if [ -d $$cuda/lib64 ]; then lib=$$cuda/lib64; fi; \
	scripts/cuda-link.sh $$cuda $(CUDA_LINK) >&2 && \
	PATH=$$cuda/bin:$$PATH CUDA_ROOT=$$cuda CUDA_PATH=$$cuda CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) \
	LIBRARY_PATH=$(CUDA_LINK) RUSTFLAGS="-C link-arg=-Wl,-rpath,$$lib" $(CARGO)
cuda-toolkit:
ifneq ($(CUDA_SYSTEM),)
	@echo "CUDA toolkit: $(CUDA_SYSTEM) (nothing installed from PyPI)"
else
	@[ -x $(CUDA_VENV)/bin/python ] || python3 -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
		nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 \
		nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
endif
build-cuda: cuda-toolkit
	$(CUDA_CARGO) build --release --features cuda --target-dir target/cuda -p multitune-cli -p multitune-server

## test-cuda: the GPU checks (app/src/cuda_tests.rs: f32 loss and gradients against the CPU,
## bf16 logits, a short training run) on CUDA device 0; needs a machine with a GPU.
test-cuda: cuda-toolkit
	$(CUDA_CARGO) test --release --features cuda --target-dir target/cuda -p multitune --lib cuda_tests

## gpu-bundle: everything the GPU check needs, built here (no GPU needed) into one
## file of at most 60 MiB, target/gpu-bundle/multitune-gpu.tar.xz: the CLI with `cuda` and
## the CUDA test binary (stripped, xz), scripts/gpu-check.sh as its runner and the PyTorch
## reference. On a GPU machine (NVIDIA driver and CUDA 13 libraries, e.g. PyTorch's; no
## Rust, network or PyPI): `tar xJf multitune-gpu.tar.xz && multitune-gpu/gpu-check.sh`.
## Here it also checks the size and that the runner stops with "no GPU seen".
gpu-bundle: build-cuda
	@tests=$$($(CUDA_CARGO) test --release --features cuda --target-dir target/cuda -p multitune --lib --no-run \
		--message-format=json | python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "multitune"][-1])') && \
	scripts/gpu-bundle.sh target/cuda/release/multitune $$tests

## bench-setup: the Python reference for `make bench` (PyTorch, transformers, PEFT) in a
## virtual environment; never needed by the tests. REF=pinned (default) installs the versions
## of bench/requirements.txt into bench/.venv; REF=latest the newest pip offers today into
## bench/.venv-latest (then `make bench REF=latest` measures against it).
REF ?= pinned
BENCH_VENV ?= $(if $(filter latest,$(REF)),bench/.venv-latest,bench/.venv)
bench-setup:
	@[ -x $(BENCH_VENV)/bin/python ] || python3 -m venv $(BENCH_VENV)
	$(if $(filter latest,$(REF)),$(BENCH_VENV)/bin/pip install -q --upgrade torch transformers peft numpy,$(BENCH_VENV)/bin/pip install -q -r bench/requirements.txt)
	@$(BENCH_VENV)/bin/python -c "import torch, transformers, peft; print('reference:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"

## bench: ours and PyTorch + PEFT alternating, on the tiny and SmolLM2-135M models: training,
## eval and label-ranking throughput, MFU, peak memory and the ratio (2 threads each).
## Without the reference environment only our figures are printed. BENCH_ARGS adds flags.
bench: build-release
	$(BIN_RELEASE) --models-dir $(MODELS) fetch-model
	$(BIN_RELEASE) --models-dir $(MODELS) bench --models tiny,default --threads 2 --steps 10 \
		$$( [ -x $(BENCH_VENV)/bin/python ] && echo --reference $(BENCH_VENV)/bin/python ) \
		--json target/bench-$(REF).json $(BENCH_ARGS)

## bench-sizes: what the data-size curves cost: the demo comparison (every strategy), then
## the same with three data sizes, timed one after the other; prints both and the ratio.
## BENCH_ARGS adds compare flags (e.g. --eval-limit 50); BUDGET, FRACTIONS as in the script.
bench-sizes: build-release
	$(BIN_RELEASE) --models-dir $(MODELS) fetch-model
	scripts/bench-sizes.sh $(BIN_RELEASE) $(MODELS) $(BENCH_ARGS)

## bench-merges: what --tune-merges adds: the demo comparison (every strategy), then the
## same with --tune-merges, timed one after the other; prints both, the share it adds (the
## target: at most 20%) and each merge's search. BENCH_ARGS adds compare flags.
bench-merges: build-release
	$(BIN_RELEASE) --models-dir $(MODELS) fetch-model
	scripts/bench-merges.sh $(BIN_RELEASE) $(MODELS) $(BENCH_ARGS)

fmt:
	$(CARGO) fmt --all

## lint: clippy with every warning an error, on every target; rustdoc without warnings
## (broken or private intra-doc links). CI runs it after the tests.
lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

clean:
	$(CARGO) clean
