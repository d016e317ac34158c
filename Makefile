# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv venv-test demo test test-fast bench bench-quick clean docs results

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,dicom,ray,docs]'
	touch $@

demo: venv
	$(BIN)/retune demo --out demo-output

test: venv-test docs
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports  # the layer contract in pyproject.toml
	$(BIN)/pytest -q

# The quick loop while developing: lint, the layer contract and the unit tests only, i.e. every test outside
# tests/integration (real data under ../shared) and tests/slow (kill loops, memory), and none marked integration
# (the browser test) or slow (Ray): 631 tests, about 215 CPU-seconds (one process), so some 4 minutes on 2 idle
# cores; `make test` runs everything.
test-fast: venv-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest -q -m "not integration and not slow" --ignore=tests/integration --ignore=tests/slow

# Benchmarks (outside `make test`): benchmarks/README.md. Extra options: make bench BENCH_ARGS="--only embed".
BENCH_ARGS ?=

bench: venv
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: venv
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

# The documentation site (mkdocs.yml, docs/) into site/; --strict turns every broken link or reference into an error.
docs: venv-test
	$(BIN)/python -m retune.report.results_pages --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# Long (an hour or more on a few CPU cores; needs ../shared/data): rerun every experiment of docs/results.md into
# results/*.json, then refill the results tables of README.md and docs/. Outside `make test`.
results: venv
	for script in results/make_*.py; do $(BIN)/python $$script || exit 1; done
	$(BIN)/python -m retune.report.results_pages

clean:
	rm -rf $(VENV) demo-output .pytest_cache site
