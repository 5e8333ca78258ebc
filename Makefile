# Set-up lives here so that a fresh machine needs only `make autotune` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TARGET ?= a100
export HF_HUB_OFFLINE := 1

.PHONY: autotune test setup clean

autotune: $(VENV)/.installed
	$(BIN)/autotune --target $(TARGET)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed

# torch first, pinned: the 2.13.0 CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) out
