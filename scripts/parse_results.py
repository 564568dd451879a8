"""Print the paper's result tables from an output tree written by ``scripts/hicropl/*.sh``.

Usage::

    python scripts/parse_results.py [OUTPUT_ROOT] [--protocol base2new|fewshot|xd|dg|all|ablation] [--csv]
                                    [--plot PNG] [--datasets ID ...] [--source ID] [--tables TABLE ...]

Tables (rows = the paper's datasets, or ``--datasets``; missing cells are shown as ``-``):

- ``base2new`` (Table 1): base accuracy (test after training on the base classes), novel accuracy (eval-only
  run on the new classes) and HM = 2 * B * N / (B + N) of the mean base and mean novel accuracy. The Average row
  averages base and novel over the datasets that have both and takes the HM of those two averages, as the paper
  does (not the mean of the per-dataset HMs).
- ``fewshot`` (Table 14): accuracy per K; the Average row is the mean over the datasets that have that K.
- ``xd`` (Table 2) and ``dg`` (Table 3): accuracy on the source (test after training) and on each target
  (eval-only runs); Average = mean over the targets.
- ``ablation`` (Tables 4-7, 11-13, Fig. 4; not part of ``all``): one table per ablation (``--tables``, default
  all), one line per row of ``scripts/ablations.py`` in the paper's order: the base-to-novel Average (base, novel,
  HM of the two) of the row's tree ``ablation/<row>/`` written by ``scripts/hicropl/ablation.sh``, beside the
  paper's row. The paper's rows average all 11 datasets: Δ is shown only where ours does too.

Methods: one column group per trainer found under OUTPUT_ROOT (``.../<Trainer>/<cfg>/seed<S>``; ``--trainer``
picks them), each on its method's published config of the protocol (``PROTOCOL_CONFIGS``; ``--*-config`` overrides)
and beside its own paper numbers (HiCroPL: the top-level entries of ``paper_results.json``; other methods: its
``methods`` entry, from HiCroPL's Tables 1 and 14). ``--default-config TRAINER PROTOCOL DATASET`` prints that config
name (the protocol scripts ask it).

Per cell: mean +- standard deviation over the seeds found (``seed<S>`` folders). The standard deviation is the
POPULATION one (ddof = 0), as CoOp-family ``parse_test_res.py`` prints it (numpy's default); with a single seed
only the mean is shown. A cell from fewer seeds than the most seeds of its table is marked ``(n=<seeds>)``. Beside
every number of ours: the paper's HiCroPL number (``scripts/paper_results.json``) and ours minus paper.

Where a run's accuracy comes from: its ``results.json``, else, for runs of the original code, its Dassl logs
(``log.txt`` and the ``log.txt-<time>`` of reruns, newest first): the last ``* accuracy: X%`` after the last
``=> result``, and for a training run only after the ``Finish training`` / ``Finished training`` line.
results.json is append-only (a folder can hold the test after training, eval-only runs, reruns); the record of a
cell is the latest ``test`` record that fits it: for a training run written after training (``stage`` "final"),
for an eval run not during training; of a model trained with the folder's seed (``seed<S>``; the record's
``model_identity``, else its ``seed``); with the cell's class subset (base cell "base", novel cell "new"). When
several fitting records disagree, a ``warning:`` line on stderr names the folder and the accuracies.

``--finished RUN_DIR --run-kind train|eval`` only answers (exit status 0 = yes, 1 = no) whether the run in RUN_DIR
has its final test result in results.json; ``scripts/hicropl/*.sh`` use it to skip finished runs.
"""
import argparse
import csv
import glob
import importlib.util
import io
import json
import math
import os
import os.path as osp
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

PAPER_FILE = osp.join(osp.dirname(osp.abspath(__file__)), "paper_results.json")
TRAINER = "HiCroPL"

# Dataset ids (configs/datasets/<id>.yaml) and configs of the paper's protocols, as in scripts/hicropl/common.sh.
B2N_DATASETS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
XD_TARGETS = B2N_DATASETS[1:]
DG_TARGETS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
FEWSHOT_SHOTS = [1, 2, 4, 8, 16]
CFG_B2N = "vit_b16_c2_ep50_batch32_16ctx"
CFG_B2N_IMAGENET = "vit_b16_c2_ep40_batch128_16ctx"
CFG_FEWSHOT = "vit_b16_c2_ep50_batch32_16ctx_few_shot"
CFG_XD = "vit_b16_c2_ep5_batch32_2ctx_cross_datasets"
PROTOCOLS = ("base2new", "fewshot", "xd", "dg")
# Each trainer's published config per protocol ("xd" also serves "dg"); "base2new:<dataset>" overrides "base2new"
# for one dataset. The protocol scripts read these through --default-config.
PROTOCOL_CONFIGS: Dict[str, Dict[str, str]] = {
    TRAINER: {"base2new": CFG_B2N, "base2new:imagenet": CFG_B2N_IMAGENET, "fewshot": CFG_FEWSHOT, "xd": CFG_XD},
    "LinearProbeCLIP": {"fewshot": "vit_b16"},  # few-shot only (Table 14): a probe cannot classify unseen classes
    # CoOp: CoCoOp's base-to-novel / transfer setting (M = 4 from "a photo of a"); few-shot: CoOp's M = 16 recipe
    # with the 200-epoch config (the CoOp paper uses 50 epochs for 1 shot and 100 for 2-4: set CFG for those)
    "CoOp": {"base2new": "vit_b16_ctxv1", "base2new:imagenet": "vit_b16_ep50_ctxv1", "fewshot": "vit_b16",
             "xd": "vit_b16_ep50_ctxv1"},
    "CoCoOp": {"base2new": "vit_b16_c4_ep10_batch1_ctxv1", "fewshot": "vit_b16_c4_ep10_batch1_ctxv1",
               "xd": "vit_b16_c4_ep10_batch1_ctxv1"},
    "KgCoOp": {"base2new": "vit_b16_ep100_ctxv1", "fewshot": "vit_b16_ep100_ctxv1", "xd": "vit_b16_ep100_ctxv1"},
    # TCP: the released train.py trains ImageNet and SUN397 for 25 epochs
    "TCP": {"base2new": "vit_b16_ep100_ctxv1", "base2new:imagenet": "vit_b16_ep25_ctxv1",
            "base2new:sun397": "vit_b16_ep25_ctxv1", "fewshot": "vit_b16_ep100_ctxv1", "xd": "vit_b16_ep100_ctxv1"},
    # IVLP: the MaPLe repo's 2+2 / depth-12 base-to-novel config (= HiCroPL Table 11's "w/o BKF, w/o L_cons" row)
    "IVLP": {"base2new": "vit_b16_c2_ep5_batch4_2+2ctx"},
    # MaPLe: no few-shot config was released (its Table 14 numbers come from PromptSRC's runs)
    "MaPLe": {"base2new": "vit_b16_c2_ep5_batch4_2ctx", "xd": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"},
    "PromptSRC": {"base2new": "vit_b16_c2_ep20_batch4_4+4ctx", "fewshot": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
                  "xd": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"},
    # MMA: no cross-dataset config was released (the paper: blocks 9-12, 1 epoch)
    "MMA": {"base2new": "vit_b16_ep5", "base2new:imagenet": "vit_b16_ep5_imnet"},
    # CoPrompt: one config (the released per-dataset N_CTX / PROMPT_DEPTH / W overrides are not applied)
    "CoPrompt": {"base2new": "coprompt"},
}

RUN_KINDS = ("train", "eval")  # train: final result = test after training; eval: an --eval-only run
ACCURACY_LINE = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
TRAIN_END_LINES = ("Finish training", "Finished training")  # this engine / Dassl <= 0.6.0 (SPEC F11)


# ---------------------------------------------------------------------------------------------------------------------
# One run: its final accuracy
# ---------------------------------------------------------------------------------------------------------------------


def _is_after_training(record: Dict[str, Any]) -> bool:
    """Whether a ``test`` record of a training run is the test after training (not a per-epoch evaluation).

    Records that say so have ``stage == "final"``. For older records: with ``TEST.FINAL_MODEL best_val`` the final
    test reloads ``model-best.pth.tar`` (the record names that checkpoint); per-epoch evaluations of a dataset
    without val split are ``test`` records of the in-memory model (checkpoint null). With ``last_step`` the only
    test is the one after the last epoch.
    """
    if "stage" in record:
        return record["stage"] == "final"
    if record.get("checkpoint"):
        return True
    cfg = record.get("config") if isinstance(record.get("config"), dict) else {}
    final_model = (cfg.get("TEST") or {}).get("FINAL_MODEL")
    max_epoch = (cfg.get("OPTIM") or {}).get("MAX_EPOCH")
    return final_model != "best_val" and max_epoch is not None and record.get("epoch") == max_epoch


def model_seed(record: Dict[str, Any]) -> Any:
    """The seed the evaluated model was trained with: its ``model_identity``, else (older records) the run's seed."""
    identity = record.get("model_identity")
    if isinstance(identity, dict) and "SEED" in identity:
        return identity["SEED"]
    return record.get("seed")


def result_records(evaluations: Sequence[Any], run_kind: str) -> List[Dict[str, Any]]:
    """The ``test`` records with a numeric accuracy that can be a ``run_kind`` run's result, in file order.

    ``train``: written after training; ``eval``: not a per-epoch evaluation during training.
    """
    tests = [
        r for r in evaluations
        if isinstance(r, dict) and r.get("split") == "test" and isinstance(r.get("accuracy"), (int, float))
    ]
    if run_kind == "train":
        return [r for r in tests if _is_after_training(r)]
    return [r for r in tests if r.get("stage") != "epoch"]


def final_test_record(evaluations: Sequence[Any], run_kind: str, seed: Optional[int] = None,
                      subsample: Optional[str] = None,
                      warn: Optional[Callable[[str], None]] = None) -> Optional[Dict[str, Any]]:
    """The latest ``result_records`` entry of a model trained with ``seed`` on class subset ``subsample``.

    None (either filter) accepts any; a record that does not say its seed or subset fits. ``warn(message)`` is called
    when the fitting records disagree on the accuracy.
    """
    tests = [r for r in result_records(evaluations, run_kind)
             if (seed is None or model_seed(r) in (None, seed))
             and (subsample is None or r.get("subsample", subsample) == subsample)]
    if not tests:
        return None
    latest = tests[-1]
    accuracies = sorted({float(r["accuracy"]) for r in tests})
    if len(accuracies) > 1 and warn is not None:
        warn(f"{len(tests)} test records fit this cell with different accuracies "
             f"({', '.join(f'{a:.2f}' for a in accuracies)}); using the latest ({float(latest['accuracy']):.2f})")
    return latest


def read_evaluations(run_dir: str) -> Optional[List[Any]]:
    """The ``evaluations`` list of ``run_dir/results.json``; None if the file is missing or unreadable."""
    try:
        with open(osp.join(run_dir, "results.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    evaluations = data.get("evaluations") if isinstance(data, dict) else None
    return evaluations if isinstance(evaluations, list) else None


def accuracy_from_log(text: str, run_kind: str) -> Optional[float]:
    """Final accuracy in a Dassl log: the last ``* accuracy:`` after the last ``=> result`` line.

    For a training run only what follows the last ``Finish training``/``Finished training`` line counts
    (earlier result blocks are per-epoch val evaluations); None if the log has no such result.
    """
    lines = text.splitlines()
    if run_kind == "train":
        ends = [i for i, line in enumerate(lines) if line.strip() in TRAIN_END_LINES]
        if not ends:
            return None
        lines = lines[ends[-1] + 1:]
    starts = [i for i, line in enumerate(lines) if line.strip() == "=> result"]
    if not starts:
        return None
    matches = [ACCURACY_LINE.search(line) for line in lines[starts[-1] + 1:]]
    values = [float(m.group(1)) for m in matches if m]
    return values[-1] if values else None


def log_files(run_dir: str) -> List[str]:
    """``log.txt`` and the ``log.txt-<%Y-%m-%d-%H-%M-%S>`` files of reruns, newest first."""
    rerun_logs = sorted(glob.glob(osp.join(glob.escape(run_dir), "log.txt-*")), reverse=True)
    first_log = osp.join(run_dir, "log.txt")
    return rerun_logs + ([first_log] if osp.isfile(first_log) else [])


def warn_line(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run_accuracy(run_dir: str, run_kind: str, seed: Optional[int] = None,
                 subsample: Optional[str] = None) -> Optional[float]:
    """Final test accuracy (%) of the run in ``run_dir`` from results.json, else from its logs; None if unfinished.

    ``seed``/``subsample``: see ``final_test_record``. A results.json with ``run_kind`` results none of which fits
    gives None with a warning (the logs would show the same unfitting numbers).
    """
    evaluations = read_evaluations(run_dir)
    if evaluations is not None:
        record = final_test_record(evaluations, run_kind, seed, subsample,
                                   warn=lambda message: warn_line(f"{run_dir}: {message}"))
        if record is not None:
            return float(record["accuracy"])
        others = result_records(evaluations, run_kind)
        if others:
            found = sorted({f"seed {model_seed(r)} / {r.get('subsample', '?')} classes" for r in others})
            warn_line(f"{run_dir}: no test record of a seed-{seed} model on {subsample or 'any'} classes "
                      f"(it has {', '.join(found)}); not used")
            return None
    for path in log_files(run_dir):
        try:
            with open(path, errors="replace") as f:
                accuracy = accuracy_from_log(f.read(), run_kind)
        except OSError:
            continue
        if accuracy is not None:
            return accuracy
    return None


def folder_seed(run_dir: str) -> Optional[int]:
    """S of a ``seed<S>`` run folder, else None."""
    match = re.fullmatch(r"seed(\d+)", osp.basename(osp.normpath(run_dir)))
    return int(match.group(1)) if match else None


def seed_accuracies(parent: str, run_kind: str, subsample: Optional[str] = None) -> Dict[int, float]:
    """``{seed: accuracy}`` of the finished runs in the ``seed<S>`` folders of ``parent`` (see ``run_accuracy``)."""
    found = {}
    for path in glob.glob(osp.join(glob.escape(parent), "seed*")):
        seed = folder_seed(path)
        if seed is not None and osp.isdir(path):
            accuracy = run_accuracy(path, run_kind, seed, subsample)
            if accuracy is not None:
                found[seed] = accuracy
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and POPULATION standard deviation (ddof = 0, like numpy's default and parse_test_res.py)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2 * B * N / (B + N) (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel else 0.0


@dataclass
class Cell:
    """One number of ours beside the paper's. ``n`` counts seeds (dataset cells) or datasets (average cells)."""

    mean: Optional[float] = None
    std: Optional[float] = None
    n: int = 0
    paper: Optional[float] = None
    seeds: Tuple[int, ...] = ()
    n_of: Optional[int] = None  # average cells: number of datasets the average should cover
    comparable: bool = True  # False: the paper's number covers other datasets than ours (no difference shown)

    @property
    def diff(self) -> Optional[float]:
        return None if self.mean is None or self.paper is None or not self.comparable else self.mean - self.paper


def seed_cell(per_seed: Dict[int, float], paper: Optional[float]) -> Cell:
    """Mean +- population std over seeds (no std from a single seed)."""
    if not per_seed:
        return Cell(paper=paper)
    mean, std = mean_std(list(per_seed.values()))
    return Cell(mean, std if len(per_seed) > 1 else None, len(per_seed), paper, tuple(per_seed))


def paper_mean(used: Sequence[str], full: Sequence[str], printed: Optional[float],
               per_dataset: Dict[str, Optional[float]]) -> Optional[float]:
    """The paper's number to put beside an average of ours over the datasets ``used``.

    ``used`` is the whole table (``full``) or nothing: the paper's printed Average. A subset: the paper's own
    numbers averaged over the same datasets (None if one of them is missing), so the difference stays meaningful.
    """
    if not used or set(used) == set(full):
        return printed
    values = [per_dataset.get(ds) for ds in used]
    return None if any(v is None for v in values) else sum(values) / len(values)


def average_cell(values: Sequence[float], n_of: int, paper: Optional[float]) -> Cell:
    """Mean over datasets (no std: seeds are averaged per dataset first)."""
    if not values:
        return Cell(paper=paper, n_of=n_of)
    return Cell(sum(values) / len(values), None, len(values), paper, (), n_of)


def b2n_average(base: Sequence[Optional[float]], novel: Sequence[Optional[float]]) -> Tuple[
        Optional[float], Optional[float], Optional[float], int]:
    """Paper's Average row from per-dataset mean base/novel accuracies (None = missing).

    Only datasets with both numbers count; returns (mean base, mean novel, HM of the two means, datasets used).
    """
    pairs = [(b, n) for b, n in zip(base, novel) if b is not None and n is not None]
    if not pairs:
        return None, None, None, 0
    mean_base = sum(b for b, _ in pairs) / len(pairs)
    mean_novel = sum(n for _, n in pairs) / len(pairs)
    return mean_base, mean_novel, harmonic_mean(mean_base, mean_novel), len(pairs)


# ---------------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    dataset: str  # dataset id, or "average"
    label: str
    cells: Dict[str, Cell]


@dataclass
class Table:
    name: str  # one of PROTOCOLS
    title: str
    columns: List[Tuple[str, str]]  # (cell key, header)
    rows: List[Row]
    transposed: bool = False  # xd/dg: datasets as columns, "ours / paper / diff" as rows (the paper's layout)
    notes: List[str] = field(default_factory=list)
    trainers: List[str] = field(default_factory=lambda: [TRAINER])  # several: cell keys are "<trainer>:<key>"
    row_header: str = "Dataset"
    paper_note: str = ("Paper column of an Average over some of the datasets: the paper's numbers averaged over the "
                       "same datasets.")


def paper_for(paper: Dict[str, Any], trainer: str) -> Dict[str, Any]:
    """``paper`` with the protocol entries of ``trainer`` (HiCroPL's are the top-level ones)."""
    if trainer == TRAINER:
        return paper
    own = paper.get("methods", {}).get(trainer, {})
    return {**paper, **{key: own.get(key, {}) for key in ("base2new", "fewshot", "cross_dataset",
                                                           "domain_generalization")}}


def found_trainers(root: str, protocol: str) -> List[str]:
    """Trainer folder names with runs of ``protocol`` under ``root`` (the layout of scripts/hicropl/common.sh)."""
    if protocol == "base2new":
        pattern = osp.join(glob.escape(root), "base2new", "train_base", "*", "shots_*", "*")
    elif protocol == "fewshot":
        pattern = osp.join(glob.escape(root), "*", "*", "*shots")
    else:
        pattern = osp.join(glob.escape(root), "evaluation", "*", "*")
    names = set()
    for path in glob.glob(pattern):
        if protocol == "fewshot":
            path = osp.dirname(path)
            if osp.basename(osp.dirname(path)) in ("base2new", "evaluation"):
                continue
        names.add(osp.basename(path))
    return sorted(names)


def side_by_side(tables: Sequence[Tuple[str, Table]]) -> Table:
    """One table with a column group per trainer (cell keys ``<trainer>:<key>``), rows matched by dataset."""
    first = tables[0][1]
    columns = [(f"{trainer}:{key}", f"{trainer} {title}") for trainer, table in tables for key, title in table.columns]
    rows = []
    for index, row in enumerate(first.rows):
        cells = {}
        for trainer, table in tables:
            cells.update({f"{trainer}:{key}": cell for key, cell in table.rows[index].cells.items()})
        rows.append(Row(row.dataset, row.label, cells))
    notes = [note for _, table in tables for note in table.notes]
    return Table(first.name, first.title, columns, rows, transposed=first.transposed, notes=list(dict.fromkeys(notes)),
                 trainers=[trainer for trainer, _ in tables], row_header=first.row_header, paper_note=first.paper_note)


def load_paper(path: str = PAPER_FILE) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def display_name(dataset: str, paper: Dict[str, Any]) -> str:
    return paper.get("names", {}).get(dataset, dataset)


def found_extra(root: str, parts: Sequence[str], known: Iterable[str]) -> List[str]:
    """Dataset ids ``D`` with a folder ``root/<parts with "{ds}" replaced by D>`` (other parts may be globs)
    that are not in ``known``."""
    index = list(parts).index("{ds}")
    pattern = osp.join(glob.escape(root), *[("*" if p == "{ds}" else p) for p in parts])
    depth = len(parts) - index
    names = set()
    for path in glob.glob(pattern):
        for _ in range(depth - 1):
            path = osp.dirname(path)
        names.add(osp.basename(path))
    return sorted(names - set(known))


def also_found_note(extra: List[str]) -> List[str]:
    return [f"Also found, not tabulated (add them with --datasets): {', '.join(extra)}."] if extra else []


def default_config(trainer: str, protocol: str, dataset: str = "") -> Optional[str]:
    """The published config of ``trainer`` for ``protocol`` (``dg`` = ``xd``) on ``dataset``; None if unknown."""
    configs = PROTOCOL_CONFIGS.get(trainer, {})
    protocol = "xd" if protocol == "dg" else protocol
    return configs.get(f"{protocol}:{dataset}", configs.get(protocol))


def b2n_config(dataset: str, override: Optional[str], trainer: str = TRAINER) -> str:
    """Config of a base-to-novel run: the method's published one (HiCroPL ImageNet: 40 epochs, batch 128), unless
    overridden."""
    return override or default_config(trainer, "base2new", dataset) or ""


def base2new_table(root: str, paper: Dict[str, Any], datasets: Sequence[str], trainer: str = TRAINER,
                   config: Optional[str] = None, shots: int = 16) -> Table:
    """Table 1: base / novel / HM per dataset and the Average row (HM of the averaged base and novel)."""
    paper_b2n = paper.get("base2new", {})
    rows = []
    for ds in datasets:
        tail = osp.join(ds, f"shots_{shots}", trainer, b2n_config(ds, config, trainer))
        base = seed_accuracies(osp.join(root, "base2new", "train_base", tail), "train", "base")
        novel = seed_accuracies(osp.join(root, "base2new", "test_new", tail), "eval", "new")
        ref = paper_b2n.get(ds, {})
        cells = {"base": seed_cell(base, ref.get("base")), "novel": seed_cell(novel, ref.get("novel"))}
        hm = Cell(paper=ref.get("hm"))
        if base and novel:
            hm = Cell(harmonic_mean(cells["base"].mean, cells["novel"].mean), None,
                      min(len(base), len(novel)), ref.get("hm"), tuple(sorted(set(base) & set(novel))))
        cells["hm"] = hm
        rows.append(Row(ds, display_name(ds, paper), cells))
    mean_base, mean_novel, hm, n_used = b2n_average([r.cells["base"].mean for r in rows],
                                                    [r.cells["novel"].mean for r in rows])
    used = [r.dataset for r in rows if r.cells["base"].mean is not None and r.cells["novel"].mean is not None]
    printed = paper_b2n.get("average", {})
    ref_base = paper_mean(used, B2N_DATASETS, printed.get("base"), {d: paper_b2n.get(d, {}).get("base") for d in used})
    ref_novel = paper_mean(used, B2N_DATASETS, printed.get("novel"),
                           {d: paper_b2n.get(d, {}).get("novel") for d in used})
    ref_hm = printed.get("hm")
    if used and set(used) != set(B2N_DATASETS):
        ref_hm = None if ref_base is None or ref_novel is None else harmonic_mean(ref_base, ref_novel)
    n_of = len(rows)
    average = {
        "base": Cell(mean_base, None, n_used, ref_base, (), n_of),
        "novel": Cell(mean_novel, None, n_used, ref_novel, (), n_of),
        "hm": Cell(hm, None, n_used, ref_hm, (), n_of),
    }
    rows.append(Row("average", "Average", average))
    notes = ["HM = 2BN/(B+N) of the mean base and novel accuracies; Average: base and novel averaged over the "
             "datasets that have both, HM of those averages (as in the paper)."]
    notes += also_found_note(found_extra(root, ["base2new", "train_base", "{ds}"], datasets))
    return Table("base2new", "Base-to-novel generalisation (Table 1)",
                 [("base", "Base"), ("novel", "Novel"), ("hm", "HM")], rows, notes=notes)


def fewshot_table(root: str, paper: Dict[str, Any], datasets: Sequence[str], trainer: str = TRAINER,
                  config: str = CFG_FEWSHOT) -> Table:
    """Table 14: accuracy per K for each dataset, and the Average row over datasets."""
    paper_fs = paper.get("fewshot", {})
    shot_dir = re.compile(re.escape(config) + r"_(\d+)shots$")
    shots = set(FEWSHOT_SHOTS)
    for ds in datasets:
        for path in glob.glob(osp.join(glob.escape(osp.join(root, ds, trainer)), f"{glob.escape(config)}_*shots")):
            match = shot_dir.match(osp.basename(path))
            if match:
                shots.add(int(match.group(1)))
    keys = [str(k) for k in sorted(shots)]
    rows = []
    for ds in datasets:
        ref = paper_fs.get(ds, {})
        cells = {k: seed_cell(seed_accuracies(osp.join(root, ds, trainer, f"{config}_{k}shots"), "train"), ref.get(k))
                 for k in keys}
        rows.append(Row(ds, display_name(ds, paper), cells))
    printed = paper_fs.get("average", {})
    average = {}
    for k in keys:
        used = [r.dataset for r in rows if r.cells[k].mean is not None]
        ref = paper_mean(used, B2N_DATASETS, printed.get(k), {d: paper_fs.get(d, {}).get(k) for d in used})
        average[k] = average_cell([r.cells[k].mean for r in rows if r.cells[k].mean is not None], len(rows), ref)
    rows.append(Row("average", "Average", average))
    extra = found_extra(root, ["{ds}", glob.escape(trainer), f"{glob.escape(config)}_*shots"], datasets)
    notes = also_found_note(extra)
    return Table("fewshot", "Few-shot classification (Table 14; accuracy by shots per class K)",
                 [(k, f"K={k}") for k in keys], rows, notes=notes)


def transfer_table(name: str, root: str, paper: Dict[str, Any], targets: Sequence[str], source: str = "imagenet",
                   trainer: str = TRAINER, config: str = CFG_XD, shots: int = 16) -> Table:
    """Table 2 (``name == "xd"``) or 3 (``"dg"``): source accuracy, each target's, and the mean over targets."""
    ref = paper.get("cross_dataset" if name == "xd" else "domain_generalization", {})
    tag = f"{config}_{shots}shots"
    source_cell = seed_cell(seed_accuracies(osp.join(root, source, trainer, tag), "train"),
                            ref.get("source", {}).get(source))
    rows = [Row(source, f"{display_name(source, paper)} (source)", {"source": source_cell})]
    for ds in targets:
        per_seed = seed_accuracies(osp.join(root, "evaluation", trainer, tag, ds), "eval")
        rows.append(Row(ds, display_name(ds, paper), {"target": seed_cell(per_seed, ref.get("targets", {}).get(ds))}))
    used = [r.dataset for r in rows[1:] if r.cells["target"].mean is not None]
    ref_average = paper_mean(used, XD_TARGETS if name == "xd" else DG_TARGETS, ref.get("average"),
                             ref.get("targets", {}))
    target_means = [r.cells["target"].mean for r in rows[1:] if r.cells["target"].mean is not None]
    rows.append(Row("average", "Average (targets)", {"target": average_cell(target_means, len(targets),
                                                                            ref_average)}))
    extra = found_extra(root, ["evaluation", glob.escape(trainer), glob.escape(tag), "{ds}"],
                        list(targets) + XD_TARGETS + DG_TARGETS)
    title = ("Cross-dataset transfer (Table 2)" if name == "xd" else "Domain generalisation (Table 3)")
    return Table(name, f"{title}; source model: {source}, {tag}", [], rows, transposed=True,
                 notes=also_found_note(extra))


def load_ablations() -> Dict[str, Any]:
    """``ABLATIONS`` of scripts/ablations.py (table id -> (title, rows)), loaded by path (scripts/ is no package)."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), "ablations.py")
    spec = importlib.util.spec_from_file_location("ablations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATIONS


def ablation_table(table_id: str, root: str, paper: Dict[str, Any], datasets: Sequence[str],
                   trainer: str = TRAINER, config: Optional[str] = None) -> Table:
    """One ablation table: per row, the base-to-novel Average of ``root/ablation/<row>`` beside the paper's row."""
    title, rows_def = load_ablations()[table_id]
    paper_rows = paper.get("ablation", {}).get(table_id, {})
    rows = []
    for row_id, label, _ in rows_def:
        *per_dataset, average = base2new_table(osp.join(root, "ablation", row_id), {}, datasets, trainer,
                                               config).rows
        seeds = tuple(sorted({s for row in per_dataset for c in row.cells.values() for s in c.seeds}))
        ref = paper_rows.get(row_id, {})
        comparable = set(datasets) == set(B2N_DATASETS) and all(
            c.n == c.n_of for c in average.cells.values() if c.mean is not None)
        cells = {key: Cell(c.mean, None, c.n, ref.get(key), seeds, c.n_of, comparable)
                 for key, c in average.cells.items()}
        rows.append(Row(row_id, label.replace("|", "\\|"), cells))  # a literal bar in a markdown cell
    notes = [f"Average over {len(datasets)} dataset(s) ({', '.join(datasets)}): base and novel averaged over the "
             "datasets that have both, HM of those averages; rows from <root>/ablation/<row>/ (scripts/ablations.py)."]
    return Table(f"ablation_{table_id}", title, [("base", "Base"), ("novel", "Novel"), ("hm", "HM")], rows,
                 notes=notes, row_header="Row",
                 paper_note="Paper column: the paper's average over its 11 datasets (Δ only where ours covers them).")


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def fmt_ours(cell: Cell, max_seeds: int) -> str:
    """``mean ± std`` (std only with >= 2 seeds), ``(n=k)`` for fewer seeds than the table's most, ``(k/n)`` for
    averages over fewer datasets than the table's rows."""
    if cell.mean is None:
        return "-"
    text = fmt(cell.mean)
    if cell.std is not None and cell.n >= 2:
        text += f" ± {cell.std:.2f}"
    if cell.n_of is not None:
        if cell.n < cell.n_of:
            text += f" ({cell.n}/{cell.n_of} datasets)"
    elif cell.n < max_seeds:
        text += f" (n={cell.n})"
    return text


def table_cells(table: Table) -> Iterable[Tuple[Row, str, Cell]]:
    for row in table.rows:
        for key, cell in row.cells.items():
            yield row, key, cell


def max_seeds(table: Table) -> int:
    return max([c.n for _, _, c in table_cells(table) if c.n_of is None] or [0])


def markdown_lines(table: Table) -> List[str]:
    """The table in GitHub markdown, with the paper's number and ours - paper beside each of ours."""
    most = max_seeds(table)
    lines = [f"### {table.title}", ""]
    if table.transposed:
        lines.append("| | " + " | ".join(r.label for r in table.rows) + " |")
        lines.append("|---" * (len(table.rows) + 1) + "|")
        for trainer in table.trainers:
            prefix = f"{trainer}:" if len(table.trainers) > 1 else ""
            cells = [next(c for k, c in r.cells.items() if k.startswith(prefix)) for r in table.rows]
            lines.append(f"| {trainer} (ours) | " + " | ".join(fmt_ours(c, most) for c in cells) + " |")
            lines.append(f"| {trainer} (paper) | " + " | ".join(fmt(c.paper) for c in cells) + " |")
            lines.append("| ours - paper | " + " | ".join(fmt(c.diff, signed=True) for c in cells) + " |")
    else:
        header = [table.row_header]
        for _, title in table.columns:
            header += [title, f"{title} (paper)", "Δ"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---" * len(header) + "|")
        for row in table.rows:
            values = [f"**{row.label}**" if row.dataset == "average" else row.label]
            for key, _ in table.columns:
                cell = row.cells[key]
                values += [fmt_ours(cell, most), fmt(cell.paper), fmt(cell.diff, signed=True)]
            lines.append("| " + " | ".join(values) + " |")
    seeds = sorted({s for _, _, c in table_cells(table) for s in c.seeds})
    lines.append("")
    spread = ("mean ± population std over seeds" if most >= 2 else "one seed per cell" if most == 1
              else "seeds averaged per dataset, then datasets averaged")  # most == 0: only averages (ablation)
    if seeds:
        lines.append(f"Seeds found: {', '.join(map(str, seeds))} ({spread}); Δ = ours - paper; `-` = no result. "
                     + table.paper_note)
    else:
        lines.append("No finished runs found for this table.")
    lines += table.notes
    lines.append("")
    return lines


CSV_FIELDS = ["table", "dataset", "metric", "mean", "std", "n", "n_counts", "seeds", "paper", "diff", "trainer"]


def csv_rows(table: Table) -> Iterable[Dict[str, Any]]:
    """One row per cell: ``n`` counts seeds (``n_counts == "seeds"``) or averaged datasets (``"datasets"``)."""

    def num(value: Optional[float]) -> str:
        return "" if value is None else f"{value:.4f}"

    for row, trainer_key, cell in table_cells(table):
        trainer, key = trainer_key.split(":", 1) if len(table.trainers) > 1 else (table.trainers[0], trainer_key)
        yield {
            "trainer": trainer,
            "table": table.name, "dataset": row.dataset, "metric": key if table.name != "fewshot" else f"{key}shots",
            "mean": num(cell.mean), "std": num(cell.std), "n": cell.n,
            "n_counts": "datasets" if cell.n_of is not None else "seeds",
            "seeds": " ".join(map(str, cell.seeds)), "paper": num(cell.paper), "diff": num(cell.diff),
        }


def write_atomically(path: str, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{osp.basename(path)}.", suffix=osp.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def plot_fewshot(table: Table, path: str) -> None:
    """Few-shot curves (ours with seed std as error bars, the paper's dashed), one panel per dataset + Average."""
    import matplotlib  # imported here: slow, and only needed for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = [int(k) for k, _ in table.columns]
    rows = [r for r in table.rows
            if any(c.mean is not None or c.paper is not None for c in r.cells.values())] or table.rows[-1:]
    ncols = min(4, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows):
        cells = [row.cells[str(k)] for k in shots]
        ours = [(k, c.mean, c.std or 0.0) for k, c in zip(shots, cells) if c.mean is not None]
        ref = [(k, c.paper) for k, c in zip(shots, cells) if c.paper is not None]
        if ours:
            ax.errorbar([k for k, _, _ in ours], [m for _, m, _ in ours], yerr=[s for _, _, s in ours],
                        marker="o", capsize=3, label="HiCroPL (ours)")
        if ref:
            ax.plot([k for k, _ in ref], [v for _, v in ref], "s--", label="HiCroPL (paper)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(k) for k in shots])
        ax.set_title(row.label)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics, calibration and cost of every run found (--metrics, --cost, --reliability, --format clip_benchmark)
# ---------------------------------------------------------------------------------------------------------------------

# (record field, column header) of the --metrics table; values are means over the seeds of a row.
METRIC_COLUMNS = [("accuracy", "acc"), ("acc5", "acc5"), ("mean_per_class_recall", "mpcr"), ("macro_f1", "F1"),
                  ("nll", "NLL"), ("ece", "ECE"), ("mce", "MCE"), ("aece", "aECE")]
# --cost columns: key, header. Per run from the record's "cost"; a row shows the mean over its runs, except the
# totals (train_h_total, gpu_h_total) which sum them.
COST_COLUMNS = [("trainable_params", "params"), ("train_step_gflops", "GFLOPs/step"), ("train_h", "train h/run"),
                ("train_h_total", "train h"), ("gpu_h_total", "GPU·h"), ("eval_images_per_s", "eval img/s"),
                ("peak_memory_gib", "peak GiB"), ("device", "device"), ("precision", "prec"),
                ("world_size", "procs")]
EXPORT_FORMATS = ("markdown", "csv", "latex", "json", "clip_benchmark")


@dataclass
class RunResult:
    """The final test record of one run folder (one seed) and where it sits in the tree."""

    run_dir: str  # relative to the output root
    protocol: str  # base2new | fewshot | xd | dg | other
    record: Dict[str, Any]


def run_protocol(rel_dir: str, dataset_id: str) -> str:
    """Protocol of a run folder of ``scripts/hicropl/*.sh`` from its path relative to the output root."""
    parts = rel_dir.replace(os.sep, "/").split("/")
    if parts[0] == "base2new":
        return "base2new"
    if "evaluation" in parts:
        return "dg" if dataset_id in DG_TARGETS else "xd"
    if any("few_shot" in p for p in parts):
        return "fewshot"
    if any("cross_datasets" in p for p in parts):
        return "xd"  # the source run of xd and dg
    return "other"


def find_runs(root: str) -> List[RunResult]:
    """Every folder under ``root`` whose results.json has a final test record (``final_test_record``: the test after
    training, else an evaluation outside training), sorted by path."""
    runs = []
    for path in sorted(glob.glob(osp.join(glob.escape(root), "**", "results.json"), recursive=True)):
        run_dir = osp.dirname(path)
        evaluations = read_evaluations(run_dir) or []
        seed = folder_seed(run_dir)
        record = final_test_record(evaluations, "train", seed) or final_test_record(evaluations, "eval", seed)
        if record is None:
            continue
        rel = osp.relpath(run_dir, root)
        dataset_id = rel.replace(os.sep, "/").split("/")[-2] if "evaluation" in rel.split(os.sep) else ""
        runs.append(RunResult(rel, run_protocol(rel, dataset_id), record))
    return runs


def _run_cost(record: Dict[str, Any]) -> Dict[str, Any]:
    """The --cost values of one record (None where the record does not have them, e.g. written before costs)."""
    cost = record.get("cost") if isinstance(record.get("cost"), dict) else {}
    seconds = cost.get("train_time_s")
    hours = seconds / 3600.0 if isinstance(seconds, (int, float)) else None
    flops, memory = cost.get("train_step_flops"), cost.get("peak_memory_bytes")
    return {
        "trainable_params": cost.get("trainable_params"),
        "train_step_gflops": flops / 1e9 if isinstance(flops, (int, float)) else None,
        "train_h": hours,
        "train_h_total": hours,
        # device-hours of the processes that trained: GPU-hours on CUDA (CPU runs: CPU-process-hours)
        "gpu_h_total": hours * (cost.get("world_size") or 1) if hours is not None else None,
        "eval_images_per_s": cost.get("eval_images_per_s"),
        "peak_memory_gib": memory / 2**30 if isinstance(memory, (int, float)) else None,
        "device": cost.get("device"),
        "precision": cost.get("precision"),
        "world_size": cost.get("world_size"),
    }


def metrics_rows(runs: Sequence[RunResult], cost: bool = False) -> List[Dict[str, Any]]:
    """One row per (protocol, dataset, class subset, shots, method): the mean over its runs (seeds) of each metric
    (over the runs that recorded it; None if none did) and, with ``cost``, the cost columns."""
    groups: Dict[Tuple, List[RunResult]] = {}
    for run in runs:
        r = run.record
        key = (run.protocol, str(r.get("dataset", "-")), str(r.get("subsample", "-")), str(r.get("shots", "-")),
               str(r.get("trainer") or "-"))
        groups.setdefault(key, []).append(run)
    rows = []
    for key in sorted(groups):
        members = groups[key]
        row: Dict[str, Any] = dict(zip(["protocol", "dataset", "classes", "shots", "method"], key))
        row["seeds"] = len(members)
        values = [dict(m.record) for m in members]
        if cost:
            for value, m in zip(values, members):
                value.update(_run_cost(m.record))
        columns = METRIC_COLUMNS + (COST_COLUMNS if cost else [])
        for field_name, _ in columns:
            found = [v[field_name] for v in values if v.get(field_name) is not None]
            if not found:
                row[field_name] = None
            elif not all(isinstance(x, (int, float)) for x in found):
                row[field_name] = ", ".join(sorted({str(x) for x in found}))
            elif field_name.endswith("_total"):
                row[field_name] = sum(found)
            else:
                row[field_name] = sum(found) / len(found)
        rows.append(row)
    return rows


def _cell(value: Any, field_name: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if field_name in ("trainable_params", "seeds", "world_size"):
        return f"{value:,.0f}"
    if field_name in ("train_h", "train_h_total", "gpu_h_total"):
        return f"{value:.4f}"
    return f"{value:.2f}" if field_name != "nll" else f"{value:.4f}"


def metrics_table(rows: Sequence[Dict[str, Any]], cost: bool = False) -> Tuple[List[str], List[List[str]]]:
    """(header, formatted rows) of the --metrics table (missing values: ``-``)."""
    keys = ["protocol", "dataset", "classes", "shots", "method", "seeds"]
    columns = METRIC_COLUMNS + (COST_COLUMNS if cost else [])
    header = keys + [title for _, title in columns]
    return header, [[_cell(row[k], k) for k in keys] + [_cell(row[f], f) for f, _ in columns] for row in rows]


def latex_escape(text: str) -> str:
    text = text.replace("\\", r"\textbackslash{}")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("·", r"$\cdot$")


def latex_tabular(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A booktabs ``tabular`` (first column left-aligned, the others right-aligned)."""
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for row in rows:
        cells = [latex_escape(c.strip()) for c in row]
        cells = [r"\textbf{" + c[2:-2] + "}" if c.startswith("**") and c.endswith("**") else c for c in cells]
        lines.append(" & ".join(cells) + r" \\")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def latex_from_markdown(lines: Sequence[str]) -> List[str]:
    """The markdown of the paper tables as LaTeX: each ``|`` table a booktabs tabular, titles and notes comments."""
    out: List[str] = []
    table: List[List[str]] = []
    for line in list(lines) + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):  # the markdown separator line
                table.append(line.strip().strip("|").split("|"))
            continue
        if table:
            out += latex_tabular([c.strip() for c in table[0]], table[1:])
            table = []
        if line.startswith("### "):
            out.append(f"% {line[4:]}")
        elif line:
            out.append(f"% {line}")
    return out


def render(header: Sequence[str], rows: Sequence[Sequence[str]], fmt_name: str) -> str:
    """A table as markdown, csv or latex text."""
    if fmt_name == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    if fmt_name == "latex":
        return "\n".join(latex_tabular(header, rows))
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def pooled_reliability(runs: Sequence[RunResult]) -> Dict[str, Dict[str, Any]]:
    """``{method: reliability bins}`` pooled over the runs (counts summed, accuracy and confidence weighted by the
    counts), from the records' ``reliability`` entries; methods none of whose records has them are left out."""
    pooled: Dict[str, Dict[str, Any]] = {}
    for run in runs:
        bins = run.record.get("reliability")
        if not isinstance(bins, dict):
            continue
        method = str(run.record.get("trainer") or "-")
        m = bins["bins"]
        acc = pooled.setdefault(method, {"bins": m, "count": [0] * m, "acc_sum": [0.0] * m, "conf_sum": [0.0] * m})
        if acc["bins"] != m:
            continue  # other binning: not poolable
        for i in range(m):
            c = bins["count"][i]
            if c:
                acc["count"][i] += c
                acc["acc_sum"][i] += c * bins["accuracy"][i]
                acc["conf_sum"][i] += c * bins["confidence"][i]
    return {method: {"bins": p["bins"], "count": p["count"],
                     "accuracy": [s / c if c else None for s, c in zip(p["acc_sum"], p["count"])],
                     "confidence": [s / c if c else None for s, c in zip(p["conf_sum"], p["count"])]}
            for method, p in sorted(pooled.items())}


def plot_reliability_methods(runs: Sequence[RunResult], path: str, title: str) -> List[str]:
    """Side-by-side reliability diagrams, one panel per method (pooled over ``runs``); returns the methods drawn."""
    import matplotlib  # imported here: slow, and only needed for --reliability

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from dassl.evaluation.outputs import plot_reliability

    pooled = pooled_reliability(runs)
    methods = list(pooled) or ["(no calibration records)"]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.8), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        if method in pooled:
            plot_reliability(ax, pooled[method], f"{method} ({title})")
        else:
            ax.set_title(method)
            ax.axis("off")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return list(pooled)


def clip_benchmark_model(backbone: str) -> Tuple[str, str]:
    """CLIP_benchmark's ``(model, pretrained)`` for a ``MODEL.BACKBONE.NAME``: ``ViT-B/16`` -> ``(ViT-B-16, openai)``,
    ``open_clip:M/T`` -> ``(M, T)``, ``open_clip:M@F`` -> ``(M, F)``, ``random:X`` -> ``(X, random)``, a file ->
    ``(its file name, file)``."""
    if backbone.startswith("random:"):
        return backbone[len("random:"):].replace("open_clip:", ""), "random"
    if backbone.startswith("open_clip:"):
        spec = backbone[len("open_clip:"):]
        model, sep, source = spec.partition("@") if "@" in spec else spec.partition("/")
        return model, source if sep else ""
    if osp.sep in backbone or backbone.endswith((".pt", ".pth", ".bin")):
        return osp.basename(backbone), "file"
    return backbone.replace("/", "-"), "openai"


def clip_benchmark_json(run: RunResult) -> Dict[str, Any]:
    """One run's result in CLIP_benchmark's layout (metrics as fractions in [0, 1]; ``acc5`` null with < 5
    classes); our own fields under ``hicropl``."""
    r = run.record
    model, pretrained = clip_benchmark_model(str(r.get("backbone") or ""))

    def fraction(key: str) -> Optional[float]:
        value = r.get(key)
        return value / 100.0 if isinstance(value, (int, float)) else None

    trainer = r.get("trainer")
    return {
        "dataset": r.get("dataset"),
        "model": model,
        "pretrained": pretrained,
        "task": "zeroshot_classification" if trainer == "ZeroshotCLIP" else "prompt_learning_classification",
        "metrics": {"acc1": fraction("accuracy"), "acc5": fraction("acc5"),
                    "mean_per_class_recall": fraction("mean_per_class_recall")},
        "language": "en",
        "hicropl": {"run_dir": run.run_dir, "protocol": run.protocol, "method": trainer, "seed": model_seed(r),
                    "subsample": r.get("subsample"), "shots": r.get("shots"), "n": r.get("n"),
                    **{k: r.get(k) for k in ("nll", "ece", "mce", "aece")}},
    }


def export_clip_benchmark(runs: Sequence[RunResult], directory: str) -> List[str]:
    """Write ``<directory>/<run dir with / as __>.json`` per run (atomically); returns the paths."""
    paths = []
    for run in runs:
        path = osp.join(directory, run.run_dir.replace(os.sep, "__") + ".json")
        text = json.dumps(clip_benchmark_json(run), indent=2) + "\n"

        def write(tmp: str, text: str = text) -> None:
            with open(tmp, "w") as f:
                f.write(text)

        write_atomically(path, write)
        paths.append(path)
    return paths


def metrics_main(args: argparse.Namespace, protocols: Sequence[str]) -> int:
    """--metrics / --cost / --reliability / --format clip_benchmark on the runs of ``protocols``."""
    runs = [r for r in find_runs(args.output_root) if r.protocol in protocols or args.protocol == "all"]
    if args.format == "clip_benchmark":
        if not args.export_dir:
            print("error: --format clip_benchmark needs --export-dir DIR", file=sys.stderr)
            return 2
        for path in export_clip_benchmark(runs, args.export_dir):
            print(path)
    elif args.metrics or args.cost:
        rows = metrics_rows(runs, args.cost)
        if args.format == "json":
            print(json.dumps(rows, indent=2))
        else:
            header, cells = metrics_table(rows, args.cost)
            print(render(header, cells, args.format))
            if args.format == "markdown":
                print("\nacc, acc5, mpcr (mean per-class recall), F1, ECE, MCE, aECE in %, NLL in nats: mean over "
                      "the seeds of each row; `-` = not recorded." + (
                          " Cost: per-run means, except train h and GPU·h (sums over the row's runs; GPU·h = "
                          "training wall hours x processes)." if args.cost else ""))
    if args.reliability:
        title = args.protocol if args.protocol != "all" else "all protocols"
        drawn = plot_reliability_methods(runs, args.reliability, title)
        print(f"Reliability diagrams of {', '.join(drawn) or 'no method'} written to {args.reliability}",
              file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def trainer_table(args: argparse.Namespace, paper: Dict[str, Any], protocol: str, trainer: str) -> Table:
    """The table of one protocol for one trainer, on its published config unless overridden."""
    paper = paper_for(paper, trainer)
    if protocol == "base2new":
        return base2new_table(args.output_root, paper, args.datasets or B2N_DATASETS, trainer, args.b2n_config)
    if protocol == "fewshot":
        return fewshot_table(args.output_root, paper, args.datasets or B2N_DATASETS, trainer,
                             args.fewshot_config or default_config(trainer, "fewshot"))
    default_targets = XD_TARGETS if protocol == "xd" else DG_TARGETS
    return transfer_table(protocol, args.output_root, paper, args.datasets or default_targets, args.source, trainer,
                          args.xd_config or default_config(trainer, "xd"))


def build_tables(args: argparse.Namespace, paper: Dict[str, Any], protocols: Sequence[str]) -> List[Table]:
    """One table per protocol: a column group per trainer (``--trainer``, else those found, else HiCroPL).

    A found trainer without a published config (``PROTOCOL_CONFIGS``) is tabulated only with a ``--*-config``."""
    tables = []
    for protocol in protocols:
        if protocol == "ablation":
            trainer = args.trainer[0] if args.trainer else TRAINER
            tables += [ablation_table(t, args.output_root, paper, args.datasets or B2N_DATASETS, trainer,
                                      args.b2n_config) for t in args.tables or load_ablations()]
            continue
        overridden = {"base2new": args.b2n_config, "fewshot": args.fewshot_config}.get(protocol, args.xd_config)
        trainers = args.trainer or [t for t in found_trainers(args.output_root, protocol)
                                    if overridden or default_config(t, protocol)] or [TRAINER]
        per_trainer = [(trainer, trainer_table(args, paper, protocol, trainer)) for trainer in trainers]
        tables.append(per_trainer[0][1] if len(per_trainer) == 1 else side_by_side(per_trainer))
    return tables


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, like train.py."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_root", nargs="?", default="output",
                        help="the OUTPUT root given to scripts/hicropl/*.sh (default: output)")
    parser.add_argument("--protocol", choices=PROTOCOLS + ("all", "ablation"), default="all",
                        help="which table(s) to print (default: all = every protocol except ablation)")
    parser.add_argument("--tables", nargs="+", metavar="TABLE", choices=list(load_ablations()),
                        help="--protocol ablation: which tables (4 5 6 7 11 12 13 depth length; default: all)")
    parser.add_argument("--csv", action="store_true",
                        help="print CSV instead of markdown, one line per cell: "
                             "table,dataset,metric,mean,std,n,n_counts,seeds,paper,diff")
    parser.add_argument("--plot", metavar="PNG", help="also write the few-shot curves to this image file")
    parser.add_argument("--datasets", nargs="+", metavar="ID",
                        help="dataset ids to tabulate (default: the paper's datasets of each table; for xd/dg: "
                             "the targets)")
    parser.add_argument("--source", default="imagenet", help="source dataset id of xd/dg (default: imagenet)")
    parser.add_argument("--trainer", nargs="+", metavar="TRAINER",
                        help=f"trainer folder name(s), one column group each (default: every trainer found with a "
                             f"published config, else {TRAINER})")
    parser.add_argument("--b2n-config", help=f"base-to-novel config folder for every dataset and trainer (default: "
                                             f"each trainer's, PROTOCOL_CONFIGS; HiCroPL: {CFG_B2N_IMAGENET} for "
                                             f"imagenet, {CFG_B2N} otherwise)")
    parser.add_argument("--fewshot-config", help=f"few-shot config folder prefix (default: each trainer's; HiCroPL: "
                                                 f"{CFG_FEWSHOT})")
    parser.add_argument("--xd-config", help=f"cross-dataset / DG config folder prefix (default: each trainer's; "
                                            f"HiCroPL: {CFG_XD})")
    parser.add_argument("--default-config", nargs=3, metavar=("TRAINER", "PROTOCOL", "DATASET"),
                        help="only print the published config name of TRAINER for PROTOCOL on DATASET (exit 1 if "
                             "there is none)")
    parser.add_argument("--paper", default=PAPER_FILE, help="paper numbers (default: scripts/paper_results.json)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="output format (default markdown; --csv = --format csv); clip_benchmark writes one "
                             "JSON per run in CLIP_benchmark's layout into --export-dir")
    parser.add_argument("--export-dir", metavar="DIR", help="folder for --format clip_benchmark")
    parser.add_argument("--metrics", action="store_true",
                        help="instead of the paper tables: accuracy, top-5, mean per-class recall, macro-F1, NLL and "
                             "calibration (ECE, MCE, adaptive ECE) of every method found, per protocol and dataset")
    parser.add_argument("--cost", action="store_true",
                        help="the --metrics table with cost columns (parameters, FLOPs, training time, GPU-hours, "
                             "throughput, memory, device)")
    parser.add_argument("--reliability", metavar="PNG",
                        help="also write the reliability diagrams of the methods found (pooled over the runs of "
                             "--protocol), side by side, to this image file")
    parser.add_argument("--finished", metavar="RUN_DIR",
                        help="only check: exit 0 if RUN_DIR/results.json holds the run's final test result, else 1")
    parser.add_argument("--run-kind", choices=RUN_KINDS, default="train",
                        help="for --finished: train (final result = test after training) or eval (--eval-only run)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.default_config:
        config = default_config(*args.default_config)
        if config:
            print(config)
        return 0 if config else 1
    if args.finished:
        evaluations = read_evaluations(args.finished)
        fits = evaluations is not None and final_test_record(evaluations, args.run_kind, folder_seed(args.finished))
        return 0 if fits else 1

    if not osp.isdir(args.output_root):
        print(f"error: output root {args.output_root} is not a directory; pass the OUTPUT of scripts/hicropl/*.sh",
              file=sys.stderr)
        return 2
    try:
        paper = load_paper(args.paper)
    except (OSError, ValueError) as e:
        print(f"error: cannot read the paper numbers from {args.paper} ({e})", file=sys.stderr)
        return 2
    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    args.format = args.format or ("csv" if args.csv else "markdown")
    if args.metrics or args.cost or args.reliability or args.format == "clip_benchmark":
        return metrics_main(args, protocols)
    tables = build_tables(args, paper, protocols)

    if args.format == "json":
        print(json.dumps([row for table in tables for row in csv_rows(table)], indent=2))
    elif args.format == "latex":
        print("\n".join(latex_from_markdown([line for table in tables for line in markdown_lines(table)])))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for table in tables:
            writer.writerows(csv_rows(table))
    else:
        print("\n".join(line for table in tables for line in markdown_lines(table)))
    if args.plot:
        fewshot = next((t for t in tables if t.name == "fewshot"), None) or build_tables(args, paper, ["fewshot"])[0]
        if len(fewshot.trainers) > 1:  # the curves of the first trainer
            fewshot = trainer_table(args, paper, "fewshot", fewshot.trainers[0])
        plot_fewshot(fewshot, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
