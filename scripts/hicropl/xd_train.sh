#!/usr/bin/env bash
# Cross-dataset transfer and domain generalisation, step 1: train HiCroPL on all classes of the source dataset
# (paper: ImageNet, 16 shots per class, 5 epochs); the best-val model is tested on the source at the end
# (Tables 2 and 3, "ImageNet (source)").
#
# usage: scripts/hicropl/xd_train.sh DATASET SEED [KEY VALUE ...]
#   DATASET  source dataset id (paper: imagenet);  SEED  positive integer
# env: DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG (see common.sh); SHOTS (default 16)
# output: $OUTPUT/<ds>/HiCroPL/vit_b16_c2_ep5_batch32_2ctx_cross_datasets_16shots/seed<S>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 2)) || die "usage: $0 DATASET SEED [KEY VALUE ...]"
DATASET="$1"
SEED="$2"
shift 2
SHOTS="${SHOTS:-16}"
check_seed "$SEED"
check_shots "$SHOTS"
CFG="${CFG:-$(default_cfg xd)}"
DATASET_YAML="$(dataset_yaml "$DATASET")"
TRAINER_YAML="$(trainer_yaml "$CFG")"
DIR="$OUTPUT/$DATASET/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED"

run_job train "$DIR" "$PYTHON" train.py \
    --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_YAML" --config-file "$TRAINER_YAML" --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$SHOTS" "${EXTRA[@]}" "$@"
