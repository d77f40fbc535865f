# The two set-up commands are `make run` and `make test`; everything else is a helper of theirs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
export AGENTFARM_TOOLS ?= $(CURDIR)/.tools
CLAUDE_CODE_VERSION := $(shell cat scripts/claude-code.version)
CODEX_VERSION := $(shell cat scripts/codex.version)
PYTEST_ARGS ?=

.PHONY: run serve test check fmt venv install install-dev web-vendor claude codex system-deps test-deps k8s-testenv unit integration faults bench clean

## run: install the package and the pinned Claude Code CLI, then start the server
run: install claude
	@$(BIN)/agentfarm serve --first-run

serve:
	@$(BIN)/agentfarm serve

## test: install everything the tests need, then lint, type-check and run every test
test: test-deps check
	@scripts/test.sh $(PYTEST_ARGS)

venv: $(BIN)/python
$(BIN)/python:
	@scripts/bootstrap-python.sh "$(PYTHON)" "$(VENV)"

install: venv web-vendor
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e .

install-dev: venv web-vendor
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,kubernetes]' -r requirements-test.txt

## web-vendor: htmx and its SSE extension from the npm registry into the package (gitignored)
web-vendor:
	@scripts/build-web-vendor.sh

claude:
	@scripts/install-claude.sh "$(CLAUDE_CODE_VERSION)"

## codex: the pinned Codex CLI (about 400 MB), for `agent: codex` runs; `make run` does not install it
codex:
	@scripts/install-codex.sh "$(CODEX_VERSION)"

system-deps:
	@scripts/install-system-deps.sh

test-deps: system-deps install-dev claude codex k8s-testenv

## k8s-testenv: build the offline Kubernetes test cluster once (about 6.5 min; cached outside the repo)
k8s-testenv:
	@scripts/k8s-testenv/build.sh

## check: format, lint, types and layer contracts
check: install-dev
	@$(BIN)/ruff format --check src tests bench
	@$(BIN)/ruff check src tests bench
	@$(BIN)/mypy
	@$(BIN)/lint-imports

fmt: install-dev
	@$(BIN)/ruff format src tests bench
	@$(BIN)/ruff check --fix src tests bench

unit: install-dev
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: test-deps
	@$(BIN)/pytest tests/integration $(PYTEST_ARGS)

## faults: the fault suite alone (kill -9 of the server, hostile agents, full disks); part of `make test`
## AGENTFARM_FAULT_SEED=<n> replays the random draws of a failed run (its seed is printed)
faults: test-deps
	@scripts/test.sh tests/faults $(PYTEST_ARGS)

bench: test-deps
	@$(BIN)/python bench/launch_overhead.py
	@$(BIN)/python bench/event_ingest.py
	@$(BIN)/python bench/cockpit.py
	@$(BIN)/python bench/pipeline_latency.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

## images: build the control-plane and agent images from this tree (docker or podman; no push)
REGISTRY ?= agentfarm.local
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
DOCKER ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null || echo docker)
.PHONY: images push-images
images:
	@command -v $(DOCKER) >/dev/null || { echo "make images needs docker or podman (DOCKER=...)" >&2; exit 1; }
	$(DOCKER) build -f deploy/agent/Dockerfile --build-arg CLAUDE_CODE_VERSION=$(CLAUDE_CODE_VERSION) --build-arg CODEX_VERSION=$(CODEX_VERSION) -t $(REGISTRY)/agentfarm-agent:$(IMAGE_TAG) .
	$(DOCKER) build -f deploy/controlplane/Dockerfile -t $(REGISTRY)/agentfarm:$(IMAGE_TAG) .

## push-images: build both images, then push them to REGISTRY (e.g. REGISTRY=ghcr.io/you)
push-images:
	@case "$(REGISTRY)" in agentfarm.local) echo "set REGISTRY, e.g. make push-images REGISTRY=ghcr.io/you" >&2; exit 1;; esac
	@$(MAKE) --no-print-directory images REGISTRY=$(REGISTRY) IMAGE_TAG=$(IMAGE_TAG) DOCKER=$(DOCKER)
	$(DOCKER) push $(REGISTRY)/agentfarm-agent:$(IMAGE_TAG)
	$(DOCKER) push $(REGISTRY)/agentfarm:$(IMAGE_TAG)
