"""Predict with a trained run: open-vocabulary classification of your own images (CLI and Python API).

Examples::

    # top-5 classes of every image in a folder, among class names of your choice
    python predict.py --model-dir output/demo/train_base photos/ --classnames ring cross arrow

    # the class names of a registered dataset (here the novel half of ToyShapes), results into a CSV file
    python predict.py --model-dir output/demo/train_base data/toy_shapes/images/ring \\
        --dataset-config-file configs/datasets/toy_shapes.yaml --subsample new --out preds.csv

Python::

    from predict import load_trained
    model = load_trained("output/demo/train_base")
    probs, names = model.predict(["photo.png"], ["ring", "cross", "arrow"], topk=2)  # (1, 2) tensor, [[2 names]]

The run directory is the ``--output-dir`` of a ``train.py`` run. Its ``config.yaml`` (written by train.py) gives
the trainer, backbone, prompt settings and image pipeline, so none of them is repeated here; its
``<model name>/model-best.pth.tar`` (or ``model.pth.tar-<N>`` with ``--load-epoch N``) gives the learned weights.
Supported trainers: HiCroPL and ZeroshotCLIP (no checkpoint; its run dir only needs the config).

The class list is free: HiCroPL's text side is rebuilt for whatever names are given. Its logits fuse the prompted
class features with the frozen description classifier W (SPEC §4.1), so W is needed at prediction time too: it is
built from the run's description file (or ``--descriptions FILE``); a class that file does not describe gets the
sentence "a photo of a <class>." and one line names those classes.

Errors (one ``error: ...`` line on stderr, exit status 2): a run dir without config.yaml or checkpoint, a run of
another trainer, a checkpoint that does not fit the config, an empty or duplicated class list, a missing input
path. An image that cannot be read is skipped and reported (``--strict``: stop at it). Predictions go to stdout,
everything else to stderr; ``--out`` files are written atomically at the end.
"""
import argparse
import copy
import csv
import io
import json
import os
import os.path as osp
import sys
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm
from yacs.config import CfgNode as CN

import clip
import datasets  # noqa: F401  (registers every dataset, for --dataset-config-file)
from clip import CLIPLoadError
from clip.model import CLIP
from common.errors import MissingFileError, UserError
from dassl.config import get_cfg_default, merge_from_file_checked
from dassl.data.datasets import build_dataset
from dassl.data.transforms import build_transform
from dassl.utils import load_checkpoint, read_image
from dassl.utils.tools import atomic_write_text
from descriptions import description_file, load_descriptions
from trainers.config import add_trainer_cfg
from trainers.hicropl import HiCroPL, PRECISION_TABLE, CustomCLIP, frozen_text_features, is_same_backbone
from trainers.zsclip import ZS_PRECISIONS, ZeroshotClassifier, template_sentences

# Written by train.py into every --output-dir (the run's full merged config).
CONFIG_FILE = "config.yaml"
SUPPORTED_TRAINERS = ("HiCroPL", "ZeroshotCLIP")
# An image given to the API: a file path or a PIL image.
ImageInput = Union[str, os.PathLike, Image.Image]


# ---------------------------------------------------------------------------------------------------------------------
# Reading a run directory
# ---------------------------------------------------------------------------------------------------------------------


def read_run_config(run_dir: str) -> CN:
    """The config a run was trained with, from ``<run_dir>/config.yaml``, over today's defaults.

    Keys the run stored but today's defaults lack (added by ``train.py``'s ``extend_cfg``) are taken as they are;
    keys the run predates keep their defaults.
    """
    if not osp.isdir(run_dir):
        raise MissingFileError(f"run dir {run_dir} does not exist; pass the --output-dir of a training run")
    path = osp.join(run_dir, CONFIG_FILE)
    if not osp.isfile(path):
        raise MissingFileError(
            f"{run_dir} has no {CONFIG_FILE}; pass the --output-dir of a train.py run (train.py writes its config "
            f"there; for a run trained before it did, re-run the same train.py command: it resumes from the last "
            "checkpoint and writes the config)"
        )
    cfg = get_cfg_default()
    add_trainer_cfg(cfg)
    cfg.set_new_allowed(True)
    try:
        with open(path) as f:
            cfg.merge_from_other_cfg(CN.load_cfg(f))
    except Exception as e:  # yacs raises plain Exceptions (yaml, type and key errors)
        raise UserError(f"cannot read {path} ({' '.join(str(e).split())})") from None
    cfg.set_new_allowed(False)
    if cfg.TRAINER.NAME not in SUPPORTED_TRAINERS:
        raise UserError(
            f"{run_dir} is a run of trainer {cfg.TRAINER.NAME or '(none)'}; predict.py supports "
            f"{', '.join(SUPPORTED_TRAINERS)}"
        )
    return cfg


def checkpoint_path(run_dir: str, load_epoch: Optional[int]) -> str:
    """``<run_dir>/<HiCroPL model name>/model-best.pth.tar`` (or ``model.pth.tar-<load_epoch>``); must exist."""
    fname = "model-best.pth.tar" if load_epoch is None else f"model.pth.tar-{load_epoch}"
    path = osp.join(run_dir, HiCroPL.model_name, fname)
    if osp.isfile(path):
        return path
    found = sorted(osp.relpath(str(p), run_dir) for p in Path(run_dir).glob("*/model*.pth.tar*"))
    if not found:
        raise MissingFileError(
            f"{run_dir} holds no checkpoints (<model name>/model*.pth.tar*); pass the --output-dir of a training "
            "run (an --eval-only output dir has none: use the --model-dir it was evaluated from)"
        )
    hint = "pick one with --load-epoch N" if any(p.startswith(HiCroPL.model_name + os.sep) for p in found) else (
        f"they are not HiCroPL checkpoints ({HiCroPL.model_name}/...)")
    raise MissingFileError(f"{run_dir} has no {HiCroPL.model_name}/{fname}; it has {', '.join(found)} ({hint})")


def _precision_node(cfg: CN) -> Tuple[CN, Sequence[str]]:
    """The config node holding the trainer's ``PREC`` and the values it allows."""
    if cfg.TRAINER.NAME == "HiCroPL":
        return cfg.TRAINER.HICROPL, tuple(PRECISION_TABLE)
    return cfg.TRAINER.ZSCLIP, ZS_PRECISIONS


def choose_device(device: Optional[str], cfg: CN) -> torch.device:
    """``device`` if given, else CUDA when available and the run used it (``USE_CUDA``), else CPU."""
    if device is None:
        return torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use --device cpu")
    return chosen


def choose_precision(cfg: CN, prec: Optional[str], device: torch.device) -> None:
    """Set the trainer's PREC to ``prec``, or keep the run's; on CPU a CUDA-only run precision becomes fp32."""
    node, allowed = _precision_node(cfg)
    if prec is not None:
        if prec not in allowed:
            raise UserError(f"--prec {prec} is not a {cfg.TRAINER.NAME} precision; choose one of {', '.join(allowed)}")
        node.PREC = prec
    elif device.type == "cpu" and not PRECISION_TABLE[node.PREC].cpu_ok:
        print(f"Precision: the run used {node.PREC}, which needs CUDA; predicting in fp32 on the CPU")
        node.PREC = "fp32"
    if device.type == "cpu" and not PRECISION_TABLE[node.PREC].cpu_ok:
        raise UserError(f"precision {node.PREC} needs a CUDA device; on CPU use --prec fp32 or bf16")


def check_classnames(classnames: Sequence[str]) -> List[str]:
    """Stripped class names; none empty, no duplicates, at least one."""
    names = [str(name).strip() for name in classnames]
    if not names:
        raise UserError("the class list is empty; give at least one class name")
    if any(not name for name in names):
        raise UserError("the class list holds an empty class name")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise UserError(f"the class list names {', '.join(map(repr, duplicates))} more than once")
    return names


# ---------------------------------------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------------------------------------


class Predictor:
    """A trained run ready to classify images among any class names (build it with ``load_trained``).

    The classifier for a class list is built on first use and kept until another list is given; HiCroPL's prompt
    learner runs once per class list (as in one evaluation of ``train.py --eval-only``), so predictions equal
    that evaluation's on the same images and classes.
    """

    def __init__(
        self,
        cfg: CN,
        clip_model: CLIP,
        device: torch.device,
        state_dict: Optional[Dict[str, torch.Tensor]] = None,
        checkpoint: Optional[str] = None,
        descriptions: Optional[str] = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.checkpoint = checkpoint  # path of the loaded weights (None: ZeroshotCLIP)
        self.batch_size = cfg.DATALOADER.TEST.BATCH_SIZE
        self.transform = build_transform(cfg, is_train=False)  # the run's test pipeline
        self._clip = clip_model
        # Class features are computed by a float32 CLIP (as in training); the classifier may cast _clip to fp16,
        # so that precision keeps a float32 copy for the class lists after the first.
        fp32 = PRECISION_TABLE[_precision_node(cfg)[0].PREC].weights == torch.float32
        self._text_clip = clip_model if fp32 else copy.deepcopy(clip_model)
        self._state_dict = state_dict
        self._descriptions = descriptions
        self._teacher: Optional[CLIP] = None
        if cfg.TRAINER.NAME == "HiCroPL" and not is_same_backbone(cfg.TRAINER.HICROPL.TEACHER_NAME,
                                                                  cfg.MODEL.BACKBONE.NAME):
            self._teacher, _ = clip.load(cfg.TRAINER.HICROPL.TEACHER_NAME, device=device)
        self._classifier: Optional[Tuple[List[str], nn.Module]] = None

    def description_path(self) -> Path:
        """The description file of the class features: ``descriptions`` if given, else the run's."""
        configured = self.cfg.TRAINER.HICROPL.DESCRIPTIONS if self.cfg.TRAINER.NAME == "HiCroPL" else (
            self.cfg.TRAINER.ZSCLIP.DESCRIPTIONS)
        path = self._descriptions or configured
        return Path(path) if path else description_file(self.cfg.DATASET.NAME)

    def classifier(self, classnames: Sequence[str]) -> nn.Module:
        """The model mapping images (B, 3, H, W) to logits (B, n_cls) over ``classnames`` (label order)."""
        names = check_classnames(classnames)
        if self._classifier is not None and self._classifier[0] == names:
            return self._classifier[1]
        self._classifier = None  # free the previous one first
        cfg = self.cfg
        if cfg.TRAINER.NAME == "ZeroshotCLIP" and cfg.TRAINER.ZSCLIP.CLASSIFIER == "template":
            sentences = template_sentences(cfg.DATASET.NAME, names)
        else:
            sentences = load_descriptions(self.description_path(), names, fallback=True)
        class_features = frozen_text_features(self._text_clip, sentences)  # (n_cls, d) float32
        if cfg.TRAINER.NAME == "ZeroshotCLIP":
            model = ZeroshotClassifier(self._clip, class_features, cfg.TRAINER.ZSCLIP.PREC).to(self.device)
        else:
            model = CustomCLIP(cfg, names, self._clip, class_features, self._teacher).to(self.device)
            try:
                model.load_state_dict(self._state_dict)
            except UserError as e:
                raise UserError(f"cannot load {self.checkpoint}: {e}") from None
        model.eval()
        self._classifier = (names, model)
        return model

    def load_image(self, image: ImageInput) -> torch.Tensor:
        """One image (path or PIL image) through the run's test pipeline -> (3, H, W) float32.

        An unreadable file raises ``UserError`` naming it; a missing one ``MissingFileError``.
        """
        if isinstance(image, Image.Image):
            return self.transform(image.convert("RGB"))
        path = os.fspath(image)
        if not osp.isfile(path):
            raise MissingFileError(f"image {path} does not exist")
        return self.transform(read_image(path))

    @torch.no_grad()
    def probabilities(
        self,
        images: Union[Sequence[ImageInput], torch.Tensor],
        classnames: Sequence[str],
        batch_size: Optional[int] = None,
    ) -> torch.Tensor:
        """Softmax over ``classnames`` for each image: (N, n_cls) float32 on the CPU, rows in input order.

        images: paths / PIL images, or a tensor (N, 3, H, W) already through ``load_image``.
        """
        model = self.classifier(classnames)
        batch_size = batch_size or self.batch_size
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = chunk if isinstance(chunk, torch.Tensor) else torch.stack([self.load_image(im) for im in chunk])
            rows.append(model(batch.to(self.device)).float().softmax(dim=-1).cpu())
        if not rows:
            return torch.empty(0, len(classnames))
        return torch.cat(rows)

    def predict(
        self,
        images: Union[Sequence[ImageInput], torch.Tensor],
        classnames: Sequence[str],
        topk: int = 5,
        batch_size: Optional[int] = None,
    ) -> Tuple[torch.Tensor, List[List[str]]]:
        """The ``topk`` most probable classes of each image: probabilities (N, k) in descending order and the
        class names [N x [k names]] (k = min(topk, n_cls))."""
        if topk < 1:
            raise UserError(f"topk is {topk}; it must be >= 1")
        probs = self.probabilities(images, classnames, batch_size)
        return top_classes(probs, check_classnames(classnames), topk)


def top_classes(probs: torch.Tensor, classnames: Sequence[str], topk: int) -> Tuple[torch.Tensor, List[List[str]]]:
    """probs (N, n_cls) -> the top-k probabilities (N, k) and class names [N x [k names]]."""
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return values, [[classnames[j] for j in row] for row in indices.tolist()]


def load_trained(
    run_dir: str,
    load_epoch: Optional[int] = None,
    device: Optional[str] = None,
    prec: Optional[str] = None,
    descriptions: Optional[str] = None,
) -> Predictor:
    """The model of a training run (its ``--output-dir``), ready to ``predict`` images among any class names.

    load_epoch: load ``model.pth.tar-<N>`` instead of ``model-best.pth.tar``. device: "cpu", "cuda", "cuda:N"
    (default: CUDA if available and the run used it). prec: the trainer's ``PREC`` (default: the run's; fp32 on a
    CPU when the run's needs CUDA). descriptions: a ``{class name: [sentence, ...]}`` file for the class features
    (default: the run's). Bad input raises ``UserError`` with a one-line message.
    """
    run_dir = os.fspath(run_dir)
    cfg = read_run_config(run_dir)
    state_dict, path = None, None
    if cfg.TRAINER.NAME == "HiCroPL":
        path = checkpoint_path(run_dir, load_epoch)
    elif load_epoch is not None:
        raise UserError(f"{run_dir} is a ZeroshotCLIP run: it has no checkpoints, so no epoch to load")
    chosen = choose_device(device, cfg)
    choose_precision(cfg, prec, chosen)
    cfg.freeze()
    if path is not None:
        checkpoint = load_checkpoint(path)
        state_dict = checkpoint.get("state_dict", checkpoint)
        print(f"Loaded {path} (epoch {checkpoint.get('epoch')})")
    print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
    clip_model, _ = clip.load(cfg.MODEL.BACKBONE.NAME, device=chosen)
    return Predictor(cfg, clip_model, chosen, state_dict, path, descriptions)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------

OUTPUT_FORMATS = (".csv", ".jsonl")


def image_files(inputs: Sequence[str]) -> List[str]:
    """Files given directly (any name) plus the image files under given folders (recursive, sorted)."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files = []
    for item in inputs:
        if osp.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in extensions)
            if not found:
                raise UserError(f"folder {item} holds no image files")
            files.extend(found)
        elif osp.isfile(item):
            files.append(item)
        else:
            raise MissingFileError(f"{item} does not exist (give image files or folders)")
    return files


def dataset_classnames(dataset_config_file: str, root: str, subsample: str) -> List[str]:
    """Label-ordered class names of the dataset that ``dataset_config_file`` configures (data under ``root``)."""
    cfg = get_cfg_default()
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # the key train.py's extend_cfg adds
    merge_from_file_checked(cfg, dataset_config_file)
    cfg.DATASET.ROOT = root
    cfg.DATASET.NUM_SHOTS = -1  # the class list does not depend on shots; no few-shot subset is drawn
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    return build_dataset(cfg).classnames


def read_classnames_file(path: str) -> List[str]:
    """One class name per line; blank lines and lines starting with '#' are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise UserError(f"cannot read --classnames-file {path} ({e.strerror})") from None
    return [line for line in lines if line and not line.startswith("#")]


def format_predictions(rows: List[Tuple[str, List[str], List[float]]], fmt: str, topk: int) -> str:
    """rows (image, names, probabilities) as CSV (``image,class_1,prob_1,...``) or JSON lines."""
    if fmt == ".jsonl":
        return "".join(
            json.dumps({"image": image, "predictions": [{"class": n, "probability": p} for n, p in zip(names, probs)]})
            + "\n"
            for image, names, probs in rows
        )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image"] + [f"{col}_{i}" for i in range(1, topk + 1) for col in ("class", "prob")])
    for image, names, probs in rows:
        writer.writerow([image] + [v for pair in zip(names, (f"{p:.6f}" for p in probs)) for v in pair])
    return text.getvalue()


def check_out(path: str) -> str:
    """The format of ``--out`` from its extension; its folder must be writable."""
    fmt = osp.splitext(path)[1].lower()
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"--out {path}: the file name must end in {' or '.join(OUTPUT_FORMATS)}")
    folder = osp.dirname(osp.abspath(path))
    if osp.isdir(folder) and not os.access(folder, os.W_OK):
        raise UserError(f"--out {path}: cannot write to {folder}")
    return fmt


def main(args: argparse.Namespace) -> None:
    fmt = check_out(args.out) if args.out else None
    if args.topk < 1:
        raise UserError(f"--topk is {args.topk}; it must be >= 1")
    paths = image_files(args.images)
    classnames = args.classnames or (read_classnames_file(args.classnames_file) if args.classnames_file else None)
    if classnames is not None:
        classnames = check_classnames(classnames)
    with redirect_stdout(sys.stderr):  # model building talks; stdout carries only predictions
        predictor = load_trained(args.model_dir, args.load_epoch, args.device, args.prec, args.descriptions)
        if classnames is None:
            classnames = check_classnames(dataset_classnames(
                args.dataset_config_file, args.root or predictor.cfg.DATASET.ROOT, args.subsample))
        predictor.classifier(classnames)
    batch_size = args.batch_size or predictor.batch_size

    rows: List[Tuple[str, List[str], List[float]]] = []
    skipped: List[str] = []
    with tqdm(total=len(paths), unit="image", desc="Predict", file=sys.stderr,
              disable=len(paths) <= batch_size) as progress:
        for start in range(0, len(paths), batch_size):
            images, readable = [], []
            for path in paths[start:start + batch_size]:
                try:
                    images.append(predictor.load_image(path))
                    readable.append(path)
                except UserError as e:
                    if args.strict:
                        raise
                    skipped.append(path)
                    progress.write(f"skipped: {' '.join(str(e).split())}", file=sys.stderr)
            if images:
                probs = predictor.probabilities(torch.stack(images), classnames)
                values, names = top_classes(probs, classnames, args.topk)
                for path, top_names, top_values in zip(readable, names, values.tolist()):
                    rows.append((path, top_names, top_values))
                    print(f"{path}: " + ", ".join(f"{n} {p:.3f}" for n, p in zip(top_names, top_values)))
            progress.update(len(paths[start:start + batch_size]))

    if skipped:
        print(f"{len(skipped)} of {len(paths)} images could not be read and were skipped "
              "(see the 'skipped:' lines; --strict stops at the first)", file=sys.stderr)
    if not rows:
        raise UserError(f"none of the {len(paths)} images could be read")
    if args.out:
        try:
            atomic_write_text(format_predictions(rows, fmt, min(args.topk, len(classnames))), args.out)
        except OSError as e:
            raise UserError(f"cannot write --out {args.out} ({e.strerror})") from None
        print(f"Predictions of {len(rows)} images written to {args.out}", file=sys.stderr)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other input error of this script."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files, and folders whose image files (recursive) are all predicted")
    parser.add_argument("--model-dir", required=True,
                        help="the --output-dir of a train.py run (its config.yaml and checkpoints are used)")
    parser.add_argument("--load-epoch", type=int,
                        help="load model.pth.tar-<N> instead of model-best.pth.tar")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classnames", nargs="+", metavar="NAME",
                         help="the candidate classes (put the images before this flag, or end the list with --)")
    classes.add_argument("--classnames-file", metavar="FILE", help="one class name per line ('#' lines skipped)")
    classes.add_argument("--dataset-config-file", metavar="YAML",
                         help="use the class names of this dataset (configs/datasets/<name>.yaml)")
    parser.add_argument("--root", default="",
                        help="dataset root for --dataset-config-file (default: the run's DATASET.ROOT)")
    parser.add_argument("--subsample", choices=("all", "base", "new"), default="all",
                        help="which half of the dataset's classes for --dataset-config-file (default: all)")
    parser.add_argument("--descriptions", metavar="FILE",
                        help="{class name: [sentence, ...]} JSON for the class features (default: the run's file; "
                             "classes it lacks use 'a photo of a <class>.')")
    parser.add_argument("--topk", type=int, default=5, help="classes shown per image (default: 5)")
    parser.add_argument("--out", metavar="FILE", help="also write the predictions to FILE (.csv or .jsonl)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the run's test batch size)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available and the run used it)")
    parser.add_argument("--prec", help="the trainer's PREC, e.g. fp32 or bf16 (default: the run's; on CPU fp32 "
                                       "instead of a CUDA-only one)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: skip)")
    return parser


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        main(build_parser().parse_args())
    except (UserError, CLIPLoadError) as e:
        fail(" ".join(str(e).split()))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written")
