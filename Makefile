# rooftrace: `make demo` runs the main job end to end on the sample pack; `make test` runs the tests.
# Both create the virtual environment .venv on first use; nothing else needs installing by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLE ?= $(or $(ROOFTRACE_SAMPLE_DIR),../shared/data/buildings-sample)
DEMO   ?= out/demo

OSM    ?= $(or $(ROOFTRACE_OSM_DIR),../shared/data/osm-oam)

.PHONY: venv test test-all demo osm-splits clean

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

# The main job on the sample pack: footprints for the test tiles with the shipped model (no
# training, no download), scored against the test labels, and an HTML report to look at; then a
# georeferenced scene to a GeoPackage and its report with an interactive map.
demo: venv
	@test -d "$(SAMPLE)" || { echo "sample pack not found at $(SAMPLE); set ROOFTRACE_SAMPLE_DIR"; exit 2; }
	$(BIN)/rooftrace predict --images "$(SAMPLE)/test/image" --out $(DEMO)/predict --force
	$(BIN)/rooftrace evaluate --gt "$(SAMPLE)/test/test.json" --pred $(DEMO)/predict/submission.csv --json $(DEMO)/test-scores.json --force
	$(BIN)/rooftrace report --pred $(DEMO)/predict --gt "$(SAMPLE)/test/test.json" --out $(DEMO)/report --force \
		--title "rooftrace demo: shipped model on the sample test split"
	$(BIN)/rooftrace predict-scene "$(SAMPLE)/scenes/inria_austin.tif" --out $(DEMO)/austin.gpkg --force
	$(BIN)/rooftrace report --pred $(DEMO)/austin.gpkg --raster "$(SAMPLE)/scenes/inria_austin.tif" \
		--gt "$(SAMPLE)/scenes/inria_austin.geojson" --out $(DEMO)/scene-report --force
	@echo; echo "tile report:  $(abspath $(DEMO))/report/index.html"
	@echo "scene report: $(abspath $(DEMO))/scene-report/index.html (an offline map: pan, zoom, click a building)"

# The osm-oam chips as training splits at 0.3 m (configs/unet-lite0.yaml trains on them): validation and
# test are blocks of neighbouring chips, never random chips.
osm-splits: venv
	@test -d "$(OSM)" || { echo "osm-oam pack not found at $(OSM); set ROOFTRACE_OSM_DIR"; exit 2; }
	for place in banepa kampala; do \
		$(BIN)/rooftrace prepare-chips "$(OSM)/$$place/chips" --labels "$(OSM)/$$place/labels.geojson" \
			--out out/osm/$$place --model-gsd 0.3 --val 0.2 --test 0.2 --force || exit $$?; \
	done

clean:
	rm -rf out .pytest_cache
