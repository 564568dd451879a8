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

Per cell: mean +- standard deviation over the seeds found (``seed<S>`` folders). The standard deviation is the
POPULATION one (ddof = 0), as CoOp-family ``parse_test_res.py`` prints it (numpy's default); with a single seed
only the mean is shown. A cell from fewer seeds than the most seeds of its table is marked ``(n=<seeds>)``. Beside
every number of ours: the paper's HiCroPL number (``scripts/paper_results.json``) and ours minus paper.

Where a run's accuracy comes from: its ``results.json`` (the last ``test`` record; for a training run the one
written after training), else, for runs of the original code, its Dassl logs (``log.txt`` and the
``log.txt-<time>`` of reruns, newest first): the last ``* accuracy: X%`` after the last ``=> result``, and for a
training run only after the ``Finish training`` / ``Finished training`` line.

``--finished RUN_DIR --run-kind train|eval`` only answers (exit status 0 = yes, 1 = no) whether the run in RUN_DIR
has its final test result in results.json; ``scripts/hicropl/*.sh`` use it to skip finished runs.
"""
import argparse
import csv
import glob
import importlib.util
import json
import math
import os
import os.path as osp
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

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

RUN_KINDS = ("train", "eval")  # train: final result = test after training; eval: an --eval-only run
ACCURACY_LINE = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
TRAIN_END_LINES = ("Finish training", "Finished training")  # this engine / Dassl <= 0.6.0 (SPEC F11)


# ---------------------------------------------------------------------------------------------------------------------
# One run: its final accuracy
# ---------------------------------------------------------------------------------------------------------------------


def _is_after_training(record: Dict[str, Any]) -> bool:
    """Whether a ``test`` record of a training run is the test after training (not a per-epoch evaluation).

    With ``TEST.FINAL_MODEL best_val`` the final test reloads ``model-best.pth.tar`` (the record names that
    checkpoint); per-epoch evaluations of a dataset without val split are ``test`` records of the in-memory model
    (checkpoint null). With ``last_step`` the only test is the one after the last epoch.
    """
    if record.get("checkpoint"):
        return True
    cfg = record.get("config") if isinstance(record.get("config"), dict) else {}
    final_model = (cfg.get("TEST") or {}).get("FINAL_MODEL")
    max_epoch = (cfg.get("OPTIM") or {}).get("MAX_EPOCH")
    return final_model != "best_val" and max_epoch is not None and record.get("epoch") == max_epoch


def final_test_record(evaluations: Sequence[Any], run_kind: str) -> Optional[Dict[str, Any]]:
    """The last ``test`` record with a numeric accuracy (for ``run_kind == "train"``: written after training)."""
    tests = [
        r for r in evaluations
        if isinstance(r, dict) and r.get("split") == "test" and isinstance(r.get("accuracy"), (int, float))
    ]
    if run_kind == "train":
        tests = [r for r in tests if _is_after_training(r)]
    return tests[-1] if tests else None


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


def run_accuracy(run_dir: str, run_kind: str) -> Optional[float]:
    """Final test accuracy (%) of the run in ``run_dir`` from results.json, else from its logs; None if unfinished."""
    evaluations = read_evaluations(run_dir)
    if evaluations is not None:
        record = final_test_record(evaluations, run_kind)
        if record is not None:
            return float(record["accuracy"])
    for path in log_files(run_dir):
        try:
            with open(path, errors="replace") as f:
                accuracy = accuracy_from_log(f.read(), run_kind)
        except OSError:
            continue
        if accuracy is not None:
            return accuracy
    return None


def seed_accuracies(parent: str, run_kind: str) -> Dict[int, float]:
    """``{seed: accuracy}`` of the finished runs in the ``seed<S>`` folders of ``parent``."""
    found = {}
    for path in glob.glob(osp.join(glob.escape(parent), "seed*")):
        suffix = osp.basename(path)[len("seed"):]
        if suffix.isdigit() and osp.isdir(path):
            accuracy = run_accuracy(path, run_kind)
            if accuracy is not None:
                found[int(suffix)] = accuracy
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
    row_header: str = "Dataset"
    paper_note: str = ("Paper column of an Average over some of the datasets: the paper's numbers averaged over the "
                       "same datasets.")


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


def b2n_config(dataset: str, override: Optional[str]) -> str:
    """Config of a base-to-novel run: the paper's (ImageNet: 40 epochs, batch 128), unless overridden."""
    if override:
        return override
    return CFG_B2N_IMAGENET if dataset == "imagenet" else CFG_B2N


def base2new_table(root: str, paper: Dict[str, Any], datasets: Sequence[str], trainer: str = TRAINER,
                   config: Optional[str] = None, shots: int = 16) -> Table:
    """Table 1: base / novel / HM per dataset and the Average row (HM of the averaged base and novel)."""
    paper_b2n = paper.get("base2new", {})
    rows = []
    for ds in datasets:
        tail = osp.join(ds, f"shots_{shots}", trainer, b2n_config(ds, config))
        base = seed_accuracies(osp.join(root, "base2new", "train_base", tail), "train")
        novel = seed_accuracies(osp.join(root, "base2new", "test_new", tail), "eval")
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
        cells = [next(iter(r.cells.values())) for r in table.rows]
        lines.append("| | " + " | ".join(r.label for r in table.rows) + " |")
        lines.append("|---" * (len(table.rows) + 1) + "|")
        lines.append("| HiCroPL (ours) | " + " | ".join(fmt_ours(c, most) for c in cells) + " |")
        lines.append("| HiCroPL (paper) | " + " | ".join(fmt(c.paper) for c in cells) + " |")
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


CSV_FIELDS = ["table", "dataset", "metric", "mean", "std", "n", "n_counts", "seeds", "paper", "diff"]


def csv_rows(table: Table) -> Iterable[Dict[str, Any]]:
    """One row per cell: ``n`` counts seeds (``n_counts == "seeds"``) or averaged datasets (``"datasets"``)."""

    def num(value: Optional[float]) -> str:
        return "" if value is None else f"{value:.4f}"

    for row, key, cell in table_cells(table):
        yield {
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
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def build_tables(args: argparse.Namespace, paper: Dict[str, Any], protocols: Sequence[str]) -> List[Table]:
    tables = []
    for protocol in protocols:
        if protocol == "ablation":
            tables += [ablation_table(t, args.output_root, paper, args.datasets or B2N_DATASETS, args.trainer,
                                      args.b2n_config) for t in args.tables or load_ablations()]
        elif protocol == "base2new":
            tables.append(base2new_table(args.output_root, paper, args.datasets or B2N_DATASETS, args.trainer,
                                         args.b2n_config))
        elif protocol == "fewshot":
            tables.append(fewshot_table(args.output_root, paper, args.datasets or B2N_DATASETS, args.trainer,
                                        args.fewshot_config))
        else:
            default_targets = XD_TARGETS if protocol == "xd" else DG_TARGETS
            tables.append(transfer_table(protocol, args.output_root, paper, args.datasets or default_targets,
                                         args.source, args.trainer, args.xd_config))
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
    parser.add_argument("--trainer", default=TRAINER, help=f"trainer folder name (default: {TRAINER})")
    parser.add_argument("--b2n-config", help=f"base-to-novel config folder for every dataset (default: "
                                             f"{CFG_B2N_IMAGENET} for imagenet, {CFG_B2N} otherwise)")
    parser.add_argument("--fewshot-config", default=CFG_FEWSHOT, help="few-shot config folder prefix")
    parser.add_argument("--xd-config", default=CFG_XD, help="cross-dataset / DG config folder prefix")
    parser.add_argument("--paper", default=PAPER_FILE, help="paper numbers (default: scripts/paper_results.json)")
    parser.add_argument("--finished", metavar="RUN_DIR",
                        help="only check: exit 0 if RUN_DIR/results.json holds the run's final test result, else 1")
    parser.add_argument("--run-kind", choices=RUN_KINDS, default="train",
                        help="for --finished: train (final result = test after training) or eval (--eval-only run)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.finished:
        evaluations = read_evaluations(args.finished)
        return 0 if evaluations is not None and final_test_record(evaluations, args.run_kind) else 1

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
    tables = build_tables(args, paper, protocols)

    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for table in tables:
            writer.writerows(csv_rows(table))
    else:
        print("\n".join(line for table in tables for line in markdown_lines(table)))
    if args.plot:
        fewshot = next((t for t in tables if t.name == "fewshot"), None) or build_tables(args, paper, ["fewshot"])[0]
        plot_fewshot(fewshot, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
