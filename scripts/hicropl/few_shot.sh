#!/usr/bin/env bash
# Few-shot classification: train HiCroPL on K images per class of all classes of one dataset; the best-val model is
# tested on the full test split at the end of training (Table 14 / Fig. 3).
#
# usage: scripts/hicropl/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]
#   DATASET  id of configs/datasets/<id>.yaml;  SHOTS  K (paper: 1 2 4 8 16);  SEED  positive integer
# (The released few_shot.sh used ${SEED} without ever setting it, SPEC F12; here the seed is an argument.)
# env: DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG (see common.sh)
# output: $OUTPUT/<ds>/HiCroPL/vit_b16_c2_ep50_batch32_16ctx_few_shot_<K>shots/seed<S>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 3)) || die "usage: $0 DATASET SHOTS SEED [KEY VALUE ...]"
DATASET="$1"
SHOTS="$2"
SEED="$3"
shift 3
check_shots "$SHOTS"
check_seed "$SEED"
CFG="${CFG:-$(default_cfg fewshot)}"
DATASET_YAML="$(dataset_yaml "$DATASET")"
TRAINER_YAML="$(trainer_yaml "$CFG")"
DIR="$OUTPUT/$DATASET/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED"

run_job train "$DIR" "$PYTHON" train.py \
    --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_YAML" --config-file "$TRAINER_YAML" --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$SHOTS" "${EXTRA[@]}" "$@"
