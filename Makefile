# sdglass: `make run` opens the program, `make test` runs the whole test suite.
# Both create .venv at the repository root on first use and install the project into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# GUI tests need a display: use a virtual one when none is set
XVFB := $(shell [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null 2>&1 && echo "xvfb-run -a -s '-screen 0 1600x1000x24'")

.PHONY: install run screenshot test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# the CPU build of torch lies on disk: install it first so nothing pulls a CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sdglass app

# the README's screenshots and demo movie, taken by the app's own headless capture
screenshot: $(STAMP)
	$(XVFB) $(BIN)/sdglass app --steps 400 --screenshot assets/screenshots/app.png --force
	$(XVFB) $(BIN)/sdglass app --engine ml --demo --steps 1500 --screenshot assets/screenshots/app-demo.png \
		--movie assets/screenshots/app-demo.mp4 --force
	$(XVFB) $(BIN)/sdglass app --engine ml --demo --steps 1500 --compare \
		--screenshot assets/screenshots/app-compare.png --force

test: $(STAMP)
	$(XVFB) $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
