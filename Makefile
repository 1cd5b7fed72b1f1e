# Two commands do all the set-up on a fresh machine:
#   make demo   -- devnet + sample origin + gateway on SQLite, and a paid walkthrough
#   make test   -- installs what the tests need and runs the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
UV_VERSION := 0.13.9

.PHONY: demo test install tools assets system-deps lock bench clean

demo: install tools assets
	$(BIN)/tollgate demo

test: install tools assets system-deps
	$(BIN)/pytest

install: $(VENV)/.installed

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Exact versions from the lock file, then the project itself (editable, no deps).
# Bytecode is compiled at install time (as pip does; uv does not by default): without it
# every process start compiles SQLAlchemy, aiohttp & co. from source again wherever
# PYTHONDONTWRITEBYTECODE is set, about a second of the gateway's start-up.
$(VENV)/.installed: requirements.lock pyproject.toml | $(UV)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q gateway chains sessions store >/dev/null
	touch $@

# anvil and the Solidity compiler, pinned by package-lock.json.
tools: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The wallet page's and the paywall's scripts, bundled with esbuild (`npm run build`, see
# package.json) from the npm packages pinned by package-lock.json: nothing is fetched from
# a CDN at run time. The WalletConnect bundle (hedera-wallet-connect and the Hedera SDK)
# is separate: the page loads it only when a person connects that way.
assets: static/build/.built

static/build/.built: node_modules/.installed $(wildcard web/*.js)
	npm run --silent build
	touch $@

# A real PostgreSQL server for the store tests, Chromium for the browser tests and wrk
# for the benchmark smoke test (Debian's packages; root or sudo).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null || ! command -v wrk >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql chromium wrk >/dev/null; \
	fi

# Re-resolve the lock after changing dependencies in pyproject.toml.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev -o requirements.lock -p 3.11

bench: install tools
	$(BIN)/python bench/bench_verify.py

clean:
	rm -rf $(VENV) node_modules var static/build test-output
