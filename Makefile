# rooftrace: `make demo` runs the main job end to end on the sample pack; `make test` runs the tests.
# Both create the virtual environment .venv on first use; nothing else needs installing by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLE ?= $(or $(ROOFTRACE_SAMPLE_DIR),../shared/data/buildings-sample)
DEMO   ?= out/demo

.PHONY: venv test test-all demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: venv
	$(BIN)/python -m pytest

test-all: venv
	$(BIN)/python -m pytest -m ''

# The main job on the sample pack, as far as the pipeline goes today: validate and prepare the val
# split; write the test labels as a BEGC2024 submission and score it; score the val labels after a
# round trip through plain building masks (what a perfect one-channel model could give at best).
demo: venv
	@test -d "$(SAMPLE)" || { echo "sample pack not found at $(SAMPLE); set ROOFTRACE_SAMPLE_DIR"; exit 2; }
	$(BIN)/rooftrace prepare "$(SAMPLE)/val" --out $(DEMO)/prepared-val --force
	$(BIN)/rooftrace convert "$(SAMPLE)/test/test.json" $(DEMO)/submission.csv --images "$(SAMPLE)/test/image" --force
	$(BIN)/rooftrace evaluate --gt "$(SAMPLE)/test/test.json" --pred $(DEMO)/submission.csv --json $(DEMO)/test-scores.json --force
	$(BIN)/rooftrace evaluate --gt "$(SAMPLE)/val/val.json" --pred $(DEMO)/prepared-val/masks --images "$(SAMPLE)/val/image" --json $(DEMO)/val-mask-scores.json --force
	@echo "demo outputs in $(DEMO)/ (previews: $(DEMO)/prepared-val/previews/)"

clean:
	rm -rf out .pytest_cache
