"""Config nodes added by the trainers of this library (called from ``train.py``'s ``extend_cfg``).

yacs refuses keys that do not exist in the defaults tree, so every key a trainer yaml may set is
declared here, before any yaml or command-line value is merged. Types matter: yacs rejects
int <-> float changes, so float defaults are written with a dot.

The values are validated in one place: ``trainers.hicropl.check_hicropl_cfg`` (HiCroPL) and
``trainers.zsclip.check_zsclip_cfg`` (zero-shot CLIP).
"""
from yacs.config import CfgNode as CN

# Allowed values of the string keys below (checked by the trainers).
PRECISIONS = ("fp16", "fp32", "amp", "bf16")
MAPPER_MODES = ("released", "differentiable")
ZS_CLASSIFIERS = ("template", "descriptions")
EVAL_FEATURE_CACHES = ("disk", "memory", "off")


def add_trainer_cfg(cfg: CN) -> None:
    """Add ``TRAINER.HICROPL`` and ``TRAINER.ZSCLIP`` to ``cfg`` in place."""
    cfg.TRAINER.HICROPL = CN()
    # Prompt length m (int >= 1): learnable tokens per layer in each tower (configs: 16; cross-dataset 2).
    # "X " * m + class name + "." must fit CLIP's 77-token context for every class.
    cfg.TRAINER.HICROPL.N_CTX = 2
    # Words whose token embeddings initialise the first-layer text prompts (str; "" = random init). Used only when
    # N_CTX <= 4 (released behaviour, SPEC F4): the template becomes "<CTX_INIT> <class>." and its first N_CTX tokens
    # are learnable, the rest stay fixed words. Must then have at least N_CTX tokens.
    cfg.TRAINER.HICROPL.CTX_INIT = "a photo of a"
    # Number of layers J that receive fresh prompts in both towers (int, 1 <= J <= layers of each tower;
    # configs: 12; cross-dataset 6).
    cfg.TRAINER.HICROPL.PROMPT_DEPTH = 9
    # Layer k where the mapping switches from text->vision (layers [0, k)) to vision->text (layers [k, J))
    # (int, 0 <= k <= J; configs: 6; cross-dataset 5).
    cfg.TRAINER.HICROPL.CROSS_LAYER = 6
    # Weight lambda of the consistency loss (float >= 0; configs: 12.).
    cfg.TRAINER.HICROPL.LAMBD = 10.0
    # Precision, one of PRECISIONS: "fp16" (released behaviour: CLIP and the prompt learner in fp16; CUDA only),
    # "fp32", "amp" (fp32 weights, fp16 autocast + GradScaler; CUDA only), "bf16" (fp32 weights, bf16 autocast).
    cfg.TRAINER.HICROPL.PREC = "fp16"
    # Frozen teacher image encoder (a clip.load spec, same embedding width as the backbone). "" or equal to
    # MODEL.BACKBONE.NAME -> the backbone's own frozen visual tower is reused with prompts off (no second copy).
    cfg.TRAINER.HICROPL.TEACHER_NAME = ""
    # One of MAPPER_MODES. "released" (published numbers): the mapper outputs overwrite the mapped prompts in place,
    # without gradient, on every forward; mappers, LKP and proxies stay at their initial values (not trainable).
    # "differentiable" (the paper's description): mapped prompts are computed as tensors on every forward and
    # gradients reach the mappers, LKP modules and proxy tokens. Both give the same logits on the same parameters.
    cfg.TRAINER.HICROPL.MAPPER_MODE = "released"
    # Attention heads of the two mappers and of every LKP module (int; released: 8; must divide both widths).
    cfg.TRAINER.HICROPL.MAPPER_HEADS = 8
    # Class-description JSON ({class name: [sentence, ...]}) for the frozen text classifier W (str path;
    # "" -> descriptions/<dataset key>.json, see descriptions.description_file).
    cfg.TRAINER.HICROPL.DESCRIPTIONS = ""
    # Classes missing from the description file: False -> error listing them; True -> use "a photo of a <class>."
    cfg.TRAINER.HICROPL.DESCRIPTIONS_FALLBACK = False
    # Activation checkpointing of HiCroPL's text tower (True/False, default False): while training, each text
    # block keeps only its input and is recomputed in backward. Same results, less memory, more time; useful
    # for large class counts (the text side runs over all classes every step). Measured (scripts/benchmark.py,
    # random:ViT-B/16, 1000 classes, batch 4, CPU fp32): peak memory 4.6 -> 3.0 GB, step time +30%.
    cfg.TRAINER.HICROPL.TEXT_CHECKPOINTING = False
    # Frozen teacher image features of an evaluation set, computed once and reused by later evaluations of the same
    # set (one image pass instead of two; same logits), one of EVAL_FEATURE_CACHES: "disk" (in memory for the run
    # and in $HICROPL_CACHE_DIR/teacher_features/, so later runs and seeds reuse them), "memory" (this run only),
    # "off" (the teacher runs on every evaluation batch, as released). Key: see README "Evaluation feature cache".
    cfg.TRAINER.HICROPL.CACHE_EVAL_FEATURES = "disk"

    cfg.TRAINER.ZSCLIP = CN()
    # Zero-shot classifier, one of ZS_CLASSIFIERS: "template" (CoOp's hand-crafted per-dataset sentence) or
    # "descriptions" (per class, normalised mean of the CLIP features of its description sentences).
    cfg.TRAINER.ZSCLIP.CLASSIFIER = "template"
    # Description file for CLASSIFIER "descriptions" (str path; "" -> descriptions/<dataset key>.json).
    cfg.TRAINER.ZSCLIP.DESCRIPTIONS = ""
    # Precision, one of PRECISIONS except "amp": "fp32", "fp16" (CUDA only), "bf16" (autocast).
    cfg.TRAINER.ZSCLIP.PREC = "fp32"
