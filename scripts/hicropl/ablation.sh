#!/usr/bin/env bash
# The paper's ablations (Tables 4, 5, 6, 7, 11, 12, 13 and Fig. 4): for every row of one table, the base-to-novel
# protocol (base2new_train.sh then base2new_test.sh) for every dataset and seed, with that row's config overrides.
# The rows and their overrides are listed in scripts/ablations.py; the switches are documented in
# trainers/config.py. Finished runs are skipped, partial ones resume, so the script can simply be rerun.
#
# usage: scripts/hicropl/ablation.sh TABLE [KEY VALUE ...]
#   TABLE      4, 5, 6, 7, 11, 12, 13, depth or length
#   KEY VALUE  config overrides appended after the row's own (so they win)
# env: ROWS      row ids to run (default: every row of the table), e.g. ROWS="mse l1"
#      DATASETS  dataset ids (default: the 11 of the paper);  SEEDS (default "1 2 3")
#      DATA, OUTPUT, PYTHON, EXTRA_OPTS, DRY_RUN, CFG, SHOTS as in common.sh (EXTRA_OPTS come before the row's
#      overrides, so a row's switch always wins over EXTRA_OPTS)
# output: one folder per row, $OUTPUT/ablation/<row>/ holding the base-to-novel tree of common.sh
#   ($OUTPUT/ablation/<row>/base2new/{train_base,test_new}/<ds>/shots_16/HiCroPL/<cfg>/seed<S>); the published
#   configuration is the row "hicropl" of every table, trained once and shared.
# then: python scripts/parse_results.py $OUTPUT --protocol ablation --tables TABLE
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 1)) || die "usage: $0 TABLE [KEY VALUE ...]  (TABLE: 4, 5, 6, 7, 11, 12, 13, depth, length)"
TABLE="$1"
shift
LINES="$("$PYTHON" scripts/ablations.py "$TABLE")" || exit 2
mapfile -t ROW_LINES <<< "$LINES"

ALL_ROWS=()
for LINE in "${ROW_LINES[@]}"; do ALL_ROWS+=("${LINE%% *}"); done
for ROW in ${ROWS:-}; do
    [[ " ${ALL_ROWS[*]} " == *" $ROW "* ]] || die "table $TABLE has no row '$ROW'; its rows: ${ALL_ROWS[*]}"
done

for LINE in "${ROW_LINES[@]}"; do
    read -r -a WORDS <<< "$LINE"
    ROW="${WORDS[0]}"
    if [[ -n "${ROWS:-}" && " $ROWS " != *" $ROW "* ]]; then continue; fi
    for DATASET in ${DATASETS:-$ALL_11}; do
        for SEED in $SEEDS; do
            for STEP in train test; do
                OUTPUT="$OUTPUT/ablation/$ROW" bash scripts/hicropl/base2new_$STEP.sh "$DATASET" "$SEED" \
                    "${WORDS[@]:1}" "$@"
            done
        done
    done
done
