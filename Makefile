# Two entry points on a fresh clone: `make repro` (the whole pipeline) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install repro test experiments clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest $(PYTEST_ARGS)

experiments: install  # dvc exp show, readable: test metrics and the changed params (README)
	PATH="$(CURDIR)/$(BIN):$$PATH" litpipe experiments

clean:
	rm -rf data/prepared results models tb logs reports/report.html
