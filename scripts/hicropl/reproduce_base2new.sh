#!/usr/bin/env bash
# Table 1 (base-to-novel generalisation): for every dataset and seed, train on the base classes, then test on the
# novel classes. Finished runs are skipped, partial ones resume, so the script can simply be rerun.
#
# usage: scripts/hicropl/reproduce_base2new.sh [KEY VALUE ...]
# env: DATASETS  dataset ids (default: the 11 of the paper), e.g. DATASETS="eurosat dtd"
#      SEEDS     seeds (default "1 2 3");  DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG, SHOTS as in common.sh
# then: python scripts/parse_results.py $OUTPUT --protocol base2new
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

for DATASET in ${DATASETS:-$ALL_11}; do
    for SEED in $SEEDS; do
        bash scripts/hicropl/base2new_train.sh "$DATASET" "$SEED" "$@"
        bash scripts/hicropl/base2new_test.sh "$DATASET" "$SEED" "$@"
    done
done
