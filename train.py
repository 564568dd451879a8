"""Train or evaluate a prompt learner. Command line compatible with the CoOp-family ``train.py``.

Examples::

    # train HiCroPL on the base classes of a dataset, 16 shots, seed 1
    python train.py --root DATA --seed 1 --trainer HiCroPL \\
        --dataset-config-file configs/datasets/oxford_pets.yaml \\
        --config-file configs/trainers/HiCroPL/vit_b16_c2_ep50_batch32_16ctx.yaml \\
        --output-dir output/pets/seed1 DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base

    # evaluate its best-val checkpoint on the new classes
    python train.py ... --output-dir output/pets_new/seed1 --model-dir output/pets/seed1 --eval-only \\
        DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new

    # the same training on 4 GPUs (DistributedDataParallel; DATALOADER.TRAIN_X.BATCH_SIZE stays the global batch)
    torchrun --nproc_per_node 4 train.py --root DATA --seed 1 --trainer HiCroPL ...

Config merge order: defaults -> ``extend_cfg`` -> dataset yaml -> trainer yaml -> flags -> ``KEY VALUE`` pairs.
Bad input (unknown key, wrong value type, unknown trainer or dataset, missing or corrupt data, weights or
checkpoints, unwritable output dir) ends with one ``error: ...`` line on stderr and exit status 2; a loss that
becomes NaN/inf ends with one ``error: Loss is infinite or NaN at epoch E/N, batch B/M: ...`` line and status 3;
Ctrl-C with one ``error: interrupted; ...`` line and status 130. Once log.txt is open, the error line is also
written at its end.
"""
import argparse
import glob
import os
import os.path as osp
import sys
from typing import NoReturn, Optional

import torch
from yacs.config import CfgNode as CN

import datasets  # noqa: F401  (registers every dataset)
import trainers  # noqa: F401  (registers every trainer)
from clip import CLIPCallError, CLIPLoadError
from dassl.config import get_cfg_default, merge_from_file_checked, merge_from_list_checked
from dassl.data.datasets import DATASET_REGISTRY
from dassl.engine import TRAINER_REGISTRY, build_trainer
from dassl.utils import (
    Logger,
    NonFiniteLossError,
    OutputDirLock,
    UserError,
    check_availability,
    cleanup_distributed,
    collect_env_info,
    init_distributed,
    is_main_process,
    mkdir_if_missing,
    set_random_seed,
    setup_logger,
)
from dassl.utils.tools import atomic_write_text, temp_path_beside
from trainers.config import add_trainer_cfg


def print_args(args: argparse.Namespace, cfg: CN) -> None:
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__.keys()):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def reset_cfg(cfg: CN, args: argparse.Namespace) -> None:
    """Copy command-line flags into ``cfg``, each only when its value is truthy (CoOp behaviour).

    Quirks kept on purpose: ``--seed 0`` is ignored (0 is falsy), and the default ``--seed -1`` is
    truthy, so it overrides a SEED set in a yaml file.
    """
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.accept_config_change:
        cfg.ACCEPT_CONFIG_CHANGE = True
    if args.seed:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def extend_cfg(cfg: CN) -> None:
    """Add the keys of this project to the Dassl defaults (yacs refuses unknown keys at merge time)."""
    # Which half of the classes to use, applied identically to train/val/test after few-shot sampling:
    # "all", "base" (first ceil(n/2) labels) or "new" (the rest); labels are renumbered from 0.
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    add_trainer_cfg(cfg)


def setup_cfg(args: argparse.Namespace) -> CN:
    """defaults -> extend_cfg -> dataset yaml -> trainer yaml -> flags -> KEY VALUE pairs -> freeze."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_from_file_checked(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file_checked(cfg, args.config_file)
    reset_cfg(cfg, args)
    merge_from_list_checked(cfg, args.opts)
    cfg.freeze()
    return cfg


def check_names(cfg: CN) -> None:
    """The trainer and dataset must be registered (one clear error listing the names otherwise)."""
    trainer_names = TRAINER_REGISTRY.registered_names()
    if not cfg.TRAINER.NAME:
        raise UserError(f"no trainer given: pass --trainer NAME (available: {', '.join(sorted(trainer_names))})")
    check_availability(cfg.TRAINER.NAME, trainer_names, kind="trainer")
    dataset_names = DATASET_REGISTRY.registered_names()
    if not cfg.DATASET.NAME:
        raise UserError(
            "no dataset given: pass --dataset-config-file configs/datasets/<name>.yaml "
            f"(available: {', '.join(sorted(dataset_names))})"
        )
    check_availability(cfg.DATASET.NAME, dataset_names, kind="dataset")


def check_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` and prove it is writable, before any work is done."""
    try:
        mkdir_if_missing(output_dir)
        probe = temp_path_beside(osp.join(output_dir, "write-test"))
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"cannot write to the output dir {output_dir} ({e.strerror}); choose another --output-dir"
        ) from None


def check_model_dir(model_dir: str, load_epoch: Optional[int]) -> None:
    """``model_dir`` must hold ``<name>/model-best.pth.tar`` (or ``<name>/model.pth.tar-<load_epoch>``)."""
    if not osp.isdir(model_dir):
        raise UserError(f"--model-dir {model_dir} does not exist")
    fname = "model-best.pth.tar" if load_epoch is None else f"model.pth.tar-{load_epoch}"
    if glob.glob(osp.join(glob.escape(model_dir), "*", fname)):
        return
    found = sorted({osp.basename(p) for p in glob.glob(osp.join(glob.escape(model_dir), "*", "model*.pth.tar*"))})
    if found:
        raise UserError(f"--model-dir {model_dir} has no <model name>/{fname}; it has {', '.join(found)} "
                        "(pick one with --load-epoch N)")
    raise UserError(f"--model-dir {model_dir} holds no checkpoints (<model name>/model*.pth.tar*); "
                    "point it at the --output-dir of a training run")


# The full merged config of a run, written into its output dir (read back by predict.py).
CONFIG_FILE = "config.yaml"


def save_config(cfg: CN, replace: bool = True) -> None:
    """Write ``cfg`` to ``<OUTPUT_DIR>/config.yaml`` atomically (rank 0); ``replace=False`` keeps an existing one."""
    path = osp.join(cfg.OUTPUT_DIR, CONFIG_FILE)
    if is_main_process() and (replace or not osp.exists(path)):
        atomic_write_text(cfg.dump(), path)


def main(args: argparse.Namespace) -> None:
    if args.list_trainers or args.list_datasets:
        names = TRAINER_REGISTRY.registered_names() if args.list_trainers else DATASET_REGISTRY.registered_names()
        print("\n".join(sorted(names)))
        return

    cfg = setup_cfg(args)
    check_names(cfg)
    if args.eval_only and args.model_dir:
        check_model_dir(args.model_dir, args.load_epoch)
    check_output_dir(cfg.OUTPUT_DIR)

    # Under torchrun: join the process group; only rank 0 prints and writes log.txt (errors still reach stderr).
    if init_distributed(cfg.USE_CUDA) and not is_main_process():
        sys.stdout = open(os.devnull, "w")
    # One process per output dir (rank 0 holds it for all ranks): a second one stops here, before writing anything.
    owner = OutputDirLock(cfg.OUTPUT_DIR) if is_main_process() else None
    try:
        run(args, cfg)
    finally:
        if owner is not None:
            owner.release()


def run(args: argparse.Namespace, cfg: CN) -> None:
    """Seed, open log.txt, build the trainer, then train or (``--eval-only``) load and test."""
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    if is_main_process():
        setup_logger(cfg.OUTPUT_DIR)

    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True

    print_args(args, cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{collect_env_info()}\n")

    trainer = build_trainer(cfg)

    if args.eval_only:
        if not args.model_dir and trainer.get_model_names():
            raise UserError(
                f"--eval-only needs --model-dir DIR (the --output-dir of a training run): trainer {cfg.TRAINER.NAME} "
                f"has learned weights ({', '.join(trainer.get_model_names())})"
            )
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        save_config(cfg, replace=False)  # evaluating a training run in place keeps that run's config
        trainer.test()
        return

    if not args.no_train:
        resume_dir = cfg.RESUME or cfg.OUTPUT_DIR
        if not glob.glob(osp.join(glob.escape(resume_dir), "*", "checkpoint")):
            save_config(cfg)  # a fresh run: its checkpoints are usable (predict.py) while it trains
        trainer.train()
        save_config(cfg)  # after a resume only once it succeeded: a refused resume replaces nothing


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other input error of this script."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=str, default="", help="path to the dataset root (DATASET.ROOT)")
    parser.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    parser.add_argument("--resume", type=str, default="",
                        help="checkpoint directory to resume from (RESUME; default: the output dir itself)")
    parser.add_argument("--accept-config-change", action="store_true",
                        help="resume even if the config changed what the run learns (ACCEPT_CONFIG_CHANGE); the "
                             "change is recorded in the checkpoints and results.json")
    parser.add_argument("--seed", type=int, default=-1,
                        help="only positive value enables a fixed seed (0 is ignored, as in CoOp)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods (INPUT.TRANSFORMS)")
    parser.add_argument("--config-file", type=str, default="", help="path to the trainer config yaml")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to the dataset config yaml")
    parser.add_argument("--trainer", type=str, default="", help="name of the trainer (TRAINER.NAME)")
    parser.add_argument("--backbone", type=str, default="", help="name of the backbone (MODEL.BACKBONE.NAME)")
    parser.add_argument("--head", type=str, default="", help="name of the head (MODEL.HEAD.NAME)")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="",
                        help="load the model from this directory (the --output-dir of a training run) for --eval-only")
    parser.add_argument("--load-epoch", type=int,
                        help="load model.pth.tar-<N> instead of model-best.pth.tar (for --eval-only)")
    parser.add_argument("--no-train", action="store_true", help="build everything, do not train")
    parser.add_argument("--list-trainers", action="store_true", help="print the registered trainers and exit")
    parser.add_argument("--list-datasets", action="store_true", help="print the registered datasets and exit")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command line (KEY VALUE pairs)")
    return parser


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    torch re-raises an error from a DataLoader worker (NUM_WORKERS > 0) with the worker's traceback as its
    message; the last line of that traceback is ``<module>.<class>: <original message>``.
    """
    message = str(error).strip()
    if "\n" in message and message.startswith("Caught "):
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(message.split("\n"))


def fail(message: str, status: int) -> NoReturn:
    """Print ``error: <message>`` on stderr (and into log.txt if it is open) and exit with ``status``."""
    line = f"error: {message}"
    if isinstance(sys.stdout, Logger):  # the log of the run says why it stopped
        sys.stdout.file.write(line + "\n")
        sys.stdout.file.flush()
    print(line, file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    try:
        main(build_parser().parse_args())
    except (UserError, CLIPLoadError, CLIPCallError) as e:  # bad input: config, flags, files, weights, CLIP calls
        fail(one_line(e), 2)
    except NonFiniteLossError as e:  # the run diverged
        fail(one_line(e), 3)
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume from the last saved checkpoint", 130)
    finally:
        cleanup_distributed()
