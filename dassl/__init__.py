"""A compact, Dassl-compatible training engine for CLIP prompt learning.

Module paths, names, log lines and file layouts follow the subset of Dassl.pytorch that CoOp-family
projects use (``dassl.engine.TrainerX``, ``dassl.data.datasets.DatasetBase``, ``Datum``,
``dassl.optim.build_optimizer``, ...), with the HiCroPL-vendored behaviour (``OPTIM.EPS``,
``TEST.FINAL_MODEL = "best_val"``, ties go to the later epoch, 2-decimal accuracy lines), so a trainer
or dataset file written for real Dassl runs unchanged. Additions that keep the API: a resume that
continues the lr schedule and the random streams exactly, atomic checkpoints loadable with
``torch.load(weights_only=True)``, tqdm progress bars and a ``results.json`` beside ``log.txt``.
"""

__version__ = "0.6.3+hicropl"
