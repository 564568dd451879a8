#!/usr/bin/env bash
# Cross-dataset transfer and domain generalisation, step 2: evaluate the source model of xd_train.sh on all classes
# of a target dataset (Table 2: the 10 other datasets; Table 3: imagenetv2, imagenet_sketch, imagenet_a, imagenet_r).
#
# usage: scripts/hicropl/xd_test.sh DATASET SEED [KEY VALUE ...]
#   DATASET  target dataset id;  SEED  seed of the source model to evaluate
# env: DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG (see common.sh); SHOTS (default 16, of the source run)
#   SOURCE      source dataset id of the model (default imagenet)
#   XD_LOAD_EPOCH  checkpoint model.pth.tar-N to load (default 5 = the last epoch of the 5-epoch config, as the
#                  released script passes --load-epoch 5); set it to the run's last epoch when MAX_EPOCH is
#                  overridden; set it empty (XD_LOAD_EPOCH=) to load model-best.pth.tar instead. Other TRAINERs:
#                  default = the newest model.pth.tar-N of the source run
# output: $OUTPUT/evaluation/HiCroPL/vit_b16_c2_ep5_batch32_2ctx_cross_datasets_16shots/<ds>/seed<S>
# DATASET.NUM_SHOTS -1: the target is only tested (always on its full test split), so no few-shot training subset
# is sampled or cached in the data dir (the released script left the yaml's 16, SPEC F23; same accuracy).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 2)) || die "usage: $0 DATASET SEED [KEY VALUE ...]"
DATASET="$1"
SEED="$2"
shift 2
SHOTS="${SHOTS:-16}"
SOURCE="${SOURCE:-imagenet}"
check_seed "$SEED"
check_shots "$SHOTS"
CFG="${CFG:-$(default_cfg xd)}"
DATASET_YAML="$(dataset_yaml "$DATASET")"
TRAINER_YAML="$(trainer_yaml "$CFG")"
MODEL_DIR="$OUTPUT/$SOURCE/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED"
DIR="$OUTPUT/evaluation/$TRAINER/${CFG}_${SHOTS}shots/$DATASET/seed$SEED"
if [[ "$TRAINER" == "HiCroPL" ]]; then XD_LOAD_EPOCH="${XD_LOAD_EPOCH-5}"; fi
XD_LOAD_EPOCH="${XD_LOAD_EPOCH-$(last_epoch "$MODEL_DIR")}"
LOAD=()
if [[ -n "$XD_LOAD_EPOCH" ]]; then LOAD=(--load-epoch "$XD_LOAD_EPOCH"); fi

run_job eval "$DIR" "$PYTHON" train.py \
    --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_YAML" --config-file "$TRAINER_YAML" --output-dir "$DIR" \
    --model-dir "$MODEL_DIR" "${LOAD[@]}" --eval-only DATASET.NUM_SHOTS -1 "${EXTRA[@]}" "$@"
