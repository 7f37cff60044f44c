# Two entry points, each self-contained on a machine with only python3, pip and make:
#   make demo   audit the bundled planted-shortcut example, print the report paths
#   make test   lint and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test lint format clean browser fonts

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed fonts
	$(BIN)/audit demo

test: $(VENV)/.installed-dev browser fonts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .cache reports/*/ reports/.shard-cache reports/.scheduled .pytest_cache .ruff_cache

# The report's browser test uses Debian's chromium; install it where we may (root, apt, network), else
# the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { echo "installing Debian's chromium for the report's browser test"; \
	    timeout 600 sh -c 'apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1' \
	    || echo "could not install chromium: the browser test will skip"; }

# Group names come in every script: Noto (Latin, Greek, Cyrillic, Arabic, Hebrew, Indic ..., CJK, emoji)
# lets the PDF draw them instead of empty boxes. Installed where we may (root, apt, network), else the
# PDF falls back to the fonts the machine has.
fonts:
	@fc-list 2>/dev/null | grep -q "Noto Sans CJK" || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { echo "installing Debian's Noto fonts for group names in any script"; \
	    timeout 900 sh -c 'apt-get update -qq && apt-get install -y -qq fonts-noto-core fonts-noto-cjk \
	      fonts-noto-color-emoji >/dev/null 2>&1' || echo "could not install the Noto fonts: the PDF uses what is here"; }
