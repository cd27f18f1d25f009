# Every target bootstraps .venv by itself; pip and Maven keep their downloads in the user's cache dirs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,lab]'
	touch $(STAMP)

demo: $(STAMP)          ## one sale through the real pipeline on local Kafka + PostgreSQL
	$(BIN)/stocksync demo $(ARGS)

test: $(STAMP)          ## unit, integration and end-to-end tests (starts its own Kafka and PostgreSQL)
	@# pytest exits 5 when it collected nothing: an empty selection is a failure, never a silent green
	$(BIN)/python -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)         ## benchmarks; results in reports/bench.json and a printed table
	$(BIN)/stocksync bench $(ARGS)

lint: $(STAMP)          ## ruff format --check, ruff check, mypy --strict
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache reports
