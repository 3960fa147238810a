# Vigil: `make demo` runs a real investigation on the embedded defaults; `make test` runs everything.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup demo test lint typecheck pytest bench eval holdout figures clean mlserver

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vigil demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy lifecycle tools agent evals

pytest: $(STAMP) mlserver
	sh scripts/ensure_postgres.sh
	sh scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test: lint typecheck pytest

# The V2 inference server the tests start on loopback (Seldon MLServer + its scikit-learn
# runtime) in its own venv: mlserver 1.7.1 needs fastapi<0.116, the project pins a newer one.
MLSERVER_STAMP := .venv-mlserver/.installed
mlserver: $(MLSERVER_STAMP)

$(MLSERVER_STAMP): constraints-mlserver.txt
	test -x .venv-mlserver/bin/python || $(PY) -m venv .venv-mlserver
	.venv-mlserver/bin/python -m pip install --quiet -r constraints-mlserver.txt
	touch $(MLSERVER_STAMP)

bench: $(STAMP) mlserver
	$(BIN)/vigil bench --json bench.json
	$(BIN)/python scripts/readme_figures.py --bench bench.json --holdout holdout.json

# The suite's scenarios re-drawn with new seeds, shifted minutes and renamed experiments.
holdout: $(STAMP)
	$(BIN)/python scripts/make_holdout.py .vigil/holdout
	$(BIN)/vigil eval .vigil/holdout --json holdout.json

figures: $(STAMP)
	$(BIN)/python scripts/readme_figures.py --bench bench.json --holdout holdout.json

eval: $(STAMP)
	$(BIN)/vigil eval evals/scenarios --json eval.json --markdown eval.md

clean:
	rm -rf $(VENV) .vigil .mypy_cache .ruff_cache
