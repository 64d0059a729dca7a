# Every target creates .venv when it is missing, so a fresh machine needs only Python and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.yaml

.PHONY: run test test-dist bench stress lint dist clean

$(BIN)/.installed: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The build tools (PyInstaller) and the optional packages the executable carries
# (OpenTelemetry export) come from the `dist` extra, on top of whatever is installed.
$(BIN)/.installed-dist: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dist]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/truckllm serve -c $(CONFIG)

# The whole suite but the executable's own tests, which build it first (minutes, not
# seconds): those are `make test-dist`. CI (.ci/run) runs both.
# Bytecode is cached (in __pycache__, ignored by git) even where PYTHONDONTWRITEBYTECODE
# is set: otherwise every run compiles the test modules and their rewritten asserts in each
# test worker again, and every `truckllm serve` a test starts compiles the package again.
test: $(BIN)/.installed
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -m "not dist"

test-dist: $(BIN)/.installed
	$(BIN)/pytest -m dist

bench: $(BIN)/.installed
	$(BIN)/python -m bench
	$(BIN)/python -m bench.shared

# A bounded robustness run (about a minute, 127.0.0.1 only): soak, connection abuse and a
# disconnect storm against the fake upstream; STRESS_ARGS="--write docs/reliability.md".
stress: $(BIN)/.installed
	$(BIN)/python -m bench.stress $(STRESS_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check truckllm tests bench
	$(BIN)/mypy truckllm

# dist/truckllm (one executable file, no Python needed) and the wheel beside it.
dist: $(BIN)/.installed-dist
	rm -rf dist build/pyinstaller
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .
	PYINSTALLER_CONFIG_DIR=build/pyinstaller-cache \
	$(BIN)/pyinstaller --noconfirm --clean --log-level WARN \
		--distpath dist --workpath build/pyinstaller packaging/truckllm.spec
	ls -l dist

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build dist .cache
