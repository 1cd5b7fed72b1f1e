# Two commands do all the set-up on a fresh machine:
#   make demo   -- devnet + sample origin + gateway on SQLite, and a paid walkthrough
#   make test   -- installs what the tests need and runs the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
UV_VERSION := 0.13.9

.PHONY: demo test install tools system-deps lock bench clean

demo: install tools
	$(BIN)/tollgate demo

test: install tools system-deps
	$(BIN)/pytest

install: $(VENV)/.installed

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Exact versions from the lock file, then the project itself (editable, no deps).
$(VENV)/.installed: requirements.lock pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -r requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

# anvil and the Solidity compiler, pinned by package-lock.json.
tools: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# A real PostgreSQL server for the store tests, and wrk for the benchmark (Debian's
# packages; root or sudo).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v wrk >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql wrk >/dev/null; \
	fi

# Re-resolve the lock after changing dependencies in pyproject.toml.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev -o requirements.lock -p 3.11

bench: install tools
	$(BIN)/python bench/bench_verify.py

clean:
	rm -rf $(VENV) node_modules var
