#!/usr/bin/env bash
# Base-to-novel, step 1: train HiCroPL on the base classes (16 shots per class) of one dataset; the best-val model
# is tested on the base classes at the end (Table 1, "Base").
#
# usage: scripts/hicropl/base2new_train.sh DATASET SEED [KEY VALUE ...]
#   DATASET  id of configs/datasets/<id>.yaml, e.g. imagenet, dtd, eurosat
#   SEED     positive integer (the paper's tables average seeds 1, 2, 3)
#   KEY VALUE  config overrides passed to train.py after $EXTRA_OPTS
# env: DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG (see common.sh); SHOTS (default 16)
# output: $OUTPUT/base2new/train_base/<ds>/shots_16/HiCroPL/<cfg>/seed<S>
#   <cfg> = vit_b16_c2_ep40_batch128_16ctx for ImageNet (paper: 40 epochs, batch 128), else
#           vit_b16_c2_ep50_batch32_16ctx
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 2)) || die "usage: $0 DATASET SEED [KEY VALUE ...]"
DATASET="$1"
SEED="$2"
shift 2
SHOTS="${SHOTS:-16}"
check_seed "$SEED"
check_shots "$SHOTS"
CFG="${CFG:-$(default_cfg base2new "$DATASET")}"
DATASET_YAML="$(dataset_yaml "$DATASET")"
TRAINER_YAML="$(trainer_yaml "$CFG")"
DIR="$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"

run_job train "$DIR" "$PYTHON" train.py \
    --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_YAML" --config-file "$TRAINER_YAML" --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "${EXTRA[@]}" "$@"
