#!/usr/bin/env bash
# Table 14 / Fig. 3 (few-shot classification): for every dataset, K and seed, train on K images per class of all
# classes and test at the end of training. Finished runs are skipped, partial ones resume.
#
# usage: scripts/hicropl/reproduce_few_shot.sh [KEY VALUE ...]
# env: DATASETS  dataset ids (default: the 11 of the paper);  SHOTS_LIST  values of K (default "1 2 4 8 16")
#      SEEDS     seeds (default "1 2 3");  DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG as in common.sh
# then: python scripts/parse_results.py $OUTPUT --protocol fewshot --plot fewshot.png
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

for DATASET in ${DATASETS:-$ALL_11}; do
    for K in ${SHOTS_LIST:-1 2 4 8 16}; do
        for SEED in $SEEDS; do
            bash scripts/hicropl/few_shot.sh "$DATASET" "$K" "$SEED" "$@"
        done
    done
done
