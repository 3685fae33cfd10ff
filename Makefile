# logwarden — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
SOAK_SECONDS ?= 600

.DEFAULT_GOAL := help
.PHONY: help install system-deps test lint demo bench bench-quick bench-deps soak soak-quick clean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

system-deps: ## Install NGINX and python3-venv from Debian's packages when missing (needs root)
	@bash scripts/system-deps.sh

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: run 'make system-deps' (as root) or install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## Create .venv with logwarden and the dev tools

test: system-deps install ## Run the test suite (real NGINX on loopback)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check logwarden tests lab bench
	$(VENV)/bin/mypy logwarden lab

demo: system-deps install ## Start an origin and three NGINX nodes with logwarden beside each; Ctrl-C stops
	$(PY) -m lab.demo

.PHONY: demo-bus
demo-bus: system-deps install ## The same over a Redis bus with origin offload, through a Redis crash; Ctrl-C stops
	$(PY) -m lab.demo_bus

.PHONY: bench-fleet
bench-fleet: system-deps install ## Requests and origin fetches per change (N = 3, 10); 50 nodes: propagation, RSS, Redis CPU
	$(PY) -m bench.fleet

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

bench-deps: $(VENV)/.bench-installed
	@bash scripts/system-deps.sh --bench

bench: bench-deps ## Every benchmark beside its reference (mtail, aiohttp, wrk), one table
	$(PY) -m bench

bench-quick: bench-deps ## The same at reduced sizes, under 2 minutes
	$(PY) -m bench --quick

soak: system-deps install ## 3 NGINX nodes + agents under load and faults for SOAK_SECONDS (600); one-screen report
	$(PY) -m lab.soak --seconds $(SOAK_SECONDS)

soak-quick: system-deps install ## The soak's checks in ~90 s, intervals scaled down
	$(PY) -m lab.soak --quick

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
