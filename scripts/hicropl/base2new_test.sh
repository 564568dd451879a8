#!/usr/bin/env bash
# Base-to-novel, step 2: evaluate the model trained by base2new_train.sh on the novel classes (Table 1, "Novel").
#
# usage: scripts/hicropl/base2new_test.sh DATASET SEED [KEY VALUE ...]
#   same arguments and environment as base2new_train.sh (use the same EXTRA_OPTS / CFG / SHOTS as for training)
#   B2N_LOAD_EPOCH  unset or empty (default): load model-best.pth.tar; N: load model.pth.tar-N. Other TRAINERs
#                   (CoOp family, last-epoch protocol): unset = the newest model.pth.tar-N of the training run
# The released test script defined LOADEP=5 but never passed it, so the published novel numbers come from the
# best-val checkpoint (SPEC F2). Loading model-best is kept deliberately to reproduce them; note that the
# "best val" model of ImageNet is selected on its test images (ImageNet's val split is its test set, SPEC F1).
# output: $OUTPUT/base2new/test_new/<ds>/shots_16/HiCroPL/<cfg>/seed<S>
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
MODEL_DIR="$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
DIR="$OUTPUT/base2new/test_new/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
if [[ "$TRAINER" != "HiCroPL" ]]; then B2N_LOAD_EPOCH="${B2N_LOAD_EPOCH-$(last_epoch "$MODEL_DIR")}"; fi
LOAD=()
if [[ -n "${B2N_LOAD_EPOCH:-}" ]]; then LOAD=(--load-epoch "$B2N_LOAD_EPOCH"); fi

run_job eval "$DIR" "$PYTHON" train.py \
    --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_YAML" --config-file "$TRAINER_YAML" --output-dir "$DIR" \
    --model-dir "$MODEL_DIR" "${LOAD[@]}" --eval-only \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new "${EXTRA[@]}" "$@"
