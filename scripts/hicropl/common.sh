# Shared by scripts/hicropl/*.sh (sourced, never run on its own).
#
# Environment (all optional):
#   DATA        dataset root, passed as --root (default: <repo>/data; a relative path is taken from the caller's cwd)
#   OUTPUT      output root of the layout below (default: <repo>/output; relative: from the caller's cwd)
#   PYTHON      interpreter (default: python)
#   EXTRA_OPTS  extra "KEY VALUE ..." config overrides appended to every train.py call, split on whitespace
#               (no quoting: write values without spaces, e.g. INPUT.SIZE "(32,32)"); trailing KEY VALUE arguments
#               of a script are appended after them, so they win
#   TRAINER     the method (default HiCroPL; also CoOp, CoCoOp, KgCoOp, TCP): --trainer of train.py and the
#               <Trainer> folder of the layout below
#   CFG         trainer config name in configs/trainers/$TRAINER/ (default: the method's published config of each
#               protocol, `python scripts/parse_results.py --default-config TRAINER PROTOCOL DATASET`)
#   DRY_RUN=1   print the exact commands, one a line, instead of running them (finished runs are still skipped)
#
# Output layout (SPEC §7, the released scripts' directories; <Trainer> = $TRAINER):
#   base-to-novel   $OUTPUT/base2new/train_base/<ds>/shots_16/<Trainer>/<cfg>/seed<S>
#                   $OUTPUT/base2new/test_new/<ds>/shots_16/<Trainer>/<cfg>/seed<S>
#   few-shot        $OUTPUT/<ds>/<Trainer>/<cfg>_<K>shots/seed<S>
#   cross-dataset   $OUTPUT/<source>/<Trainer>/<cfg>_16shots/seed<S>               (train on the source)
#   and domain gen. $OUTPUT/evaluation/<Trainer>/<cfg>_16shots/<ds>/seed<S>        (test on each target)
#
# A run is finished when its results.json holds its final test result (for a training run: the test after
# training); finished runs are skipped. Any other run is (re)started with the same command: train.py resumes a
# partial training run from the last checkpoint in its output dir.

set -euo pipefail

CALLER_PWD="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON="${PYTHON:-python}"
TRAINER="${TRAINER:-HiCroPL}"

die() {
    echo "error: $*" >&2
    exit 2
}

[[ -d "configs/trainers/$TRAINER" ]] || die "unknown TRAINER '$TRAINER' (no configs/trainers/$TRAINER/); choose one of: \
$(cd configs/trainers && ls -d -- */ | tr -d / | paste -sd ' ')"

# default_cfg PROTOCOL [DATASET]: the method's published config (scripts/parse_results.py PROTOCOL_CONFIGS). HiCroPL
# (SPEC §6.1): ImageNet base-to-novel uses the 40-epoch / batch-128 config in training AND testing (the released
# train script used the batch-32 config for every dataset while its test script looked for the ImageNet run under
# the batch-128 name, SPEC F3).
default_cfg() {
    "$PYTHON" scripts/parse_results.py --default-config "$TRAINER" "$1" "${2:-}" ||
        die "no published $1 config for TRAINER=$TRAINER; set CFG to a file name of configs/trainers/$TRAINER/"
}

# last_epoch MODEL_DIR: N of the newest model.pth.tar-N under MODEL_DIR/<model name>/ (nothing if none yet), for
# methods whose published protocol tests the last-epoch model (CoOp family: TEST.FINAL_MODEL last_step).
last_epoch() {
    local files=("$1"/*/model.pth.tar-*)
    [[ -e "${files[0]}" ]] || return 0
    printf '%s\n' "${files[@]##*-}" | sort -n | tail -1
}

# abs_path PATH: PATH made absolute against the caller's working directory.
abs_path() {
    case "$1" in
        /*) echo "$1" ;;
        *) echo "$CALLER_PWD/$1" ;;
    esac
}

if [[ -n "${DATA:-}" ]]; then DATA="$(abs_path "$DATA")"; else DATA="$PWD/data"; fi
if [[ -n "${OUTPUT:-}" ]]; then OUTPUT="$(abs_path "$OUTPUT")"; else OUTPUT="$PWD/output"; fi
export DATA OUTPUT PYTHON

read -r -a EXTRA <<< "${EXTRA_OPTS:-}"

# dataset_yaml DS: configs/datasets/DS.yaml, or a one-line error naming the valid ids.
dataset_yaml() {
    local f="configs/datasets/$1.yaml"
    if [[ ! -f "$f" ]]; then
        local ids
        ids="$(cd configs/datasets && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')"
        ids="${ids% }"
        die "unknown dataset id '$1' (no $f); choose one of: $ids"
    fi
    echo "$f"
}

# trainer_yaml CFG: configs/trainers/HiCroPL/CFG.yaml, or a one-line error.
trainer_yaml() {
    local f="configs/trainers/$TRAINER/$1.yaml"
    [[ -f "$f" ]] || die "unknown config '$1' (no $f); set CFG to a file name of configs/trainers/$TRAINER/ (no .yaml)"
    echo "$f"
}

# check_seed S: train.py ignores --seed 0 and negative seeds disable seeding, so only positive integers are valid.
check_seed() {
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || die "seed must be a positive integer, got '$1' (train.py ignores --seed 0)"
}

# check_shots K: a positive number of training images per class.
check_shots() {
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || die "shots must be a positive integer, got '$1'"
}

# is_finished KIND DIR: true when DIR/results.json holds the final test result of a KIND (train|eval) run.
is_finished() {
    [[ -f "$2/results.json" ]] || return 1
    "$PYTHON" scripts/parse_results.py --finished "$2" --run-kind "$1"
}

# run_job KIND DIR COMMAND...: skip a finished run, print COMMAND under DRY_RUN=1, run it otherwise.
run_job() {
    local kind="$1" dir="$2"
    shift 2
    if is_finished "$kind" "$dir"; then
        echo "skip (finished): $dir"
        return 0
    fi
    local line
    line="$(printf '%q ' "$@")"
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        echo "${line% }"
        return 0
    fi
    echo "run: ${line% }"
    "$@"
}

# Dataset ids (configs/datasets/<id>.yaml) of the paper's tables.
ALL_11="imagenet caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
XD_TARGETS="caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
DG_TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"

# Seeds of the drivers (CoOp-family convention, SPEC §6.4: results are averaged over seeds 1, 2, 3).
SEEDS="${SEEDS:-1 2 3}"
