# Entry points on a fresh clone: `make repro` (the whole pipeline), `make test` (every test, as CI runs them) and
# `make test-fast` (the tests not marked slow).
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

LOCK := requirements.lock
# Where `make lock` resolves from, besides PyPI: on the reference machine, its local index and torch cap.
LOCK_SOURCES ?= $(if $(wildcard /etc/xdg/pip/constraints.txt),--extra-index-url file:///opt/pypi/simple --constraint /etc/xdg/pip/constraints.txt)

.PHONY: install repro test test-fast experiments lock clean

install: $(VENV)/.installed

# Exact versions from the lock; litpipe itself editable, its dependencies already satisfied by the pins.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r $(LOCK) -e .
	touch $@

# Re-resolve every dependency (the dev extra included) to the newest versions pyproject.toml allows, for
# Linux, macOS and Windows at once (uv keeps the platform markers); then `make install` and the tests.
lock:
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --index-strategy unsafe-best-match $(LOCK_SOURCES) \
		--no-header --no-annotate -o $(LOCK).tmp
	{ echo "# Exact versions of every dependency of litpipe (pyproject.toml, dev extra included), for every"; \
	  echo "# platform; written by \`make lock\` (uv pip compile --universal). Installed by \`make install\`."; \
	  cat $(LOCK).tmp; } > $(LOCK) && rm $(LOCK).tmp

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest $(PYTEST_ARGS)

# The fast tier (under 3 minutes): params, data, figures, DAG parity, CLI errors; no test marked slow.
test-fast: install
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest -m "not slow" $(PYTEST_ARGS)

experiments: install  # dvc exp show, readable: test metrics and the changed params (README)
	PATH="$(CURDIR)/$(BIN):$$PATH" litpipe experiments

clean:
	rm -rf data/prepared results models tb logs reports/report.html
