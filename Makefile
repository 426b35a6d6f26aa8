# make demo: set up and run the all-in-one demo.  make test: set up and run every check.
# make bench: every benchmark (about 7 min; root for the shaped links): bench/results/latest.json
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest peers contract clean bench deb docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/modality-agent demo

peers:
	scripts/install-peers

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) peers
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP) peers
	$(BIN)/python -m bench.run

# the Debian package, build/modality-agent_<version>_<arch>.deb (docs/install.md)
deb:
	scripts/build-deb build

docs: $(STAMP)  # regenerate the documents made from the code (after a schema or DICOM change)
	$(BIN)/modality-agent conformance --write
	$(BIN)/modality-agent config-reference --write

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
