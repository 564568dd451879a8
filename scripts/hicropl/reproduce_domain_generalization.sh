#!/usr/bin/env bash
# Table 3 (domain generalisation): the same ImageNet-trained model as the cross-dataset protocol (trained here if
# reproduce_cross_dataset.sh has not done it yet), evaluated on ImageNet-V2, -Sketch, -A and -R with xd_test.sh.
# (The released code has no script for this table; MaPLe's practice is xd_test.sh on the variants, SPEC §7.)
#
# usage: scripts/hicropl/reproduce_domain_generalization.sh [KEY VALUE ...]
# env: SOURCE    source dataset id (default imagenet)
#      DATASETS  target dataset ids (default "imagenetv2 imagenet_sketch imagenet_a imagenet_r")
#      SEEDS     seeds (default "1 2 3");  XD_LOAD_EPOCH as in xd_test.sh
#      DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG, SHOTS as in common.sh
# then: python scripts/parse_results.py $OUTPUT --protocol dg
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SOURCE="${SOURCE:-imagenet}"
export SOURCE
for SEED in $SEEDS; do
    bash scripts/hicropl/xd_train.sh "$SOURCE" "$SEED" "$@"
    for DATASET in ${DATASETS:-$DG_TARGETS}; do
        bash scripts/hicropl/xd_test.sh "$DATASET" "$SEED" "$@"
    done
done
