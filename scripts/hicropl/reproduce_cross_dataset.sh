#!/usr/bin/env bash
# Table 2 (cross-dataset transfer): for every seed, train on the source (ImageNet, all classes, 16 shots, 5 epochs),
# then evaluate its last-epoch checkpoint on each target dataset. Finished runs are skipped, partial ones resume.
#
# usage: scripts/hicropl/reproduce_cross_dataset.sh [KEY VALUE ...]
# env: SOURCE    source dataset id (default imagenet)
#      DATASETS  target dataset ids (default: the 10 datasets other than ImageNet)
#      SEEDS     seeds (default "1 2 3");  XD_LOAD_EPOCH as in xd_test.sh
#      DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG, SHOTS as in common.sh
# then: python scripts/parse_results.py $OUTPUT --protocol xd
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SOURCE="${SOURCE:-imagenet}"
export SOURCE
for SEED in $SEEDS; do
    bash scripts/hicropl/xd_train.sh "$SOURCE" "$SEED" "$@"
    for DATASET in ${DATASETS:-$XD_TARGETS}; do
        bash scripts/hicropl/xd_test.sh "$DATASET" "$SEED" "$@"
    done
done
