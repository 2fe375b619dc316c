#!/usr/bin/env bash
# Each step's share of the gain (issue 13), on one short recipe: the shipped config (configs/unet-lite0.yaml)
# for 4 epochs of 75 steps (2,400 samples), with one thing changed at a time. Banepa is used at its own
# 0.13 m in every run (out/osm-native/banepa, prepare-chips without --model-gsd), so that pixel-size handling
# is what tells the runs apart: with it, training resamples Banepa to 0.3 m; without it, tiles are used as
# they come. Then every run is scored by benchmarks/model_card.py with default post-processing.
#
#   bash benchmarks/ablations.sh            # about 35 min on a 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RT=.venv/bin/rooftrace
OSM="${ROOFTRACE_OSM_DIR:-../shared/data/osm-oam}"
RUNS=runs/ablations
[ -d out/osm/kampala/train ] || make osm-splits
[ -d out/osm-native/banepa/train ] || $RT prepare-chips "$OSM/banepa/chips" --labels "$OSM/banepa/labels.geojson" \
    --out out/osm-native/banepa --val 0.2 --test 0.2 --force
EXTRA_TRAIN='{path: "${ROOFTRACE_EXTRA_DIR}/train", exclude_groups: [dubai tile 5, dubai tile 6], exclude: "spacenet_rio_img(59|6[0-4])"}'
ALL_TRAIN="[\"\${ROOFTRACE_SAMPLE_DIR}/train\", $EXTRA_TRAIN, out/osm-native/banepa/train, out/osm/kampala/train]"
VAL='["${ROOFTRACE_SAMPLE_DIR}/val", {path: "${ROOFTRACE_EXTRA_DIR}/train", groups: [dubai tile 5]}, {path: "${ROOFTRACE_EXTRA_DIR}/train", match: "spacenet_rio_img(59|6[01])"}, out/osm-native/banepa/val, out/osm/kampala/val]'
COMMON=(--config configs/unet-lite0.yaml --set train.epochs=4 --set train.steps_per_epoch=75 --set "train.runs_dir=$RUNS"
        --set "data.val=$VAL")
train() {  # NAME, then --set overrides
    local name=$1; shift
    if ls -d "$RUNS/$name"-*/best.safetensors >/dev/null 2>&1; then return; fi
    $RT train "${COMMON[@]}" --set "name=$name" "$@"
}
train abl-all --set "data.train=$ALL_TRAIN"
train abl-random --set "data.train=$ALL_TRAIN" --set model.encoder_weights=null
train abl-sample --set 'data.train=["${ROOFTRACE_SAMPLE_DIR}/train"]'
train abl-nogsd --set "data.train=$ALL_TRAIN" --set data.gsd=0 --set augment.pixel_scale=0
best() { ls -d "$RUNS/$1"-*/best.safetensors | tail -1; }
$PY benchmarks/model_card.py --no-tune --out out/ablations \
    "pretrained, all data, pixel size=$(best abl-all)" \
    "random encoder=$(best abl-random)" \
    "sample pack only=$(best abl-sample)" \
    "no pixel-size handling=$(best abl-nogsd)" \
    "pretrained, all data, pixel size, flip TTA=$(best abl-all)@tta"
