"""Config nodes added by the trainers of this library (called from ``train.py``'s ``extend_cfg``).

yacs refuses keys that do not exist in the defaults tree, so every key a trainer yaml may set is
declared here, before any yaml or command-line value is merged. Types matter: yacs rejects
int <-> float changes, so float defaults are written with a dot.

The values are validated in one place: ``trainers.hicropl.check_hicropl_cfg`` (HiCroPL),
``trainers.zsclip.check_zsclip_cfg`` (zero-shot CLIP) and each comparison method's ``check_cfg`` (trainers/coop.py,
cocoop.py, kgcoop.py, tcp.py, linear_probe.py).
"""
from yacs.config import CfgNode as CN

# Allowed values of the string keys below (checked by the trainers).
PRECISIONS = ("fp16", "fp32", "amp", "bf16")
MAPPER_MODES = ("released", "differentiable")
ZS_CLASSIFIERS = ("template", "descriptions")
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def add_trainer_cfg(cfg: CN) -> None:
    """Add ``TRAINER.HICROPL``, ``ZSCLIP``, ``COOP``, ``COCOOP``, ``KGCOOP``, ``TCP`` and ``LP`` to ``cfg`` in place."""
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

    cfg.TRAINER.ZSCLIP = CN()
    # Zero-shot classifier, one of ZS_CLASSIFIERS: "template" (CoOp's hand-crafted per-dataset sentence) or
    # "descriptions" (per class, normalised mean of the CLIP features of its description sentences).
    cfg.TRAINER.ZSCLIP.CLASSIFIER = "template"
    # Description file for CLASSIFIER "descriptions" (str path; "" -> descriptions/<dataset key>.json).
    cfg.TRAINER.ZSCLIP.DESCRIPTIONS = ""
    # Precision, one of PRECISIONS except "amp": "fp32", "fp16" (CUDA only), "bf16" (autocast).
    cfg.TRAINER.ZSCLIP.PREC = "fp32"

    # --- comparison methods (../shared/methods fact sheets; published values in configs/trainers/<Method>/) -----------
    # CoOp's own names and defaults, so that CoOp's configs and command lines run unchanged.
    cfg.TRAINER.COOP = CN()
    # Context length M (int >= 1; ignored when CTX_INIT is set: M = its token count).
    cfg.TRAINER.COOP.N_CTX = 16
    # Class-specific context (bool): one (M, D) context per class instead of one shared by all classes.
    cfg.TRAINER.COOP.CSC = False
    # Words that initialise the context (str, "_" = space; "" = random N(0, 0.02^2) init); published: "a photo of a".
    cfg.TRAINER.COOP.CTX_INIT = ""
    # Precision, one of PRECISIONS (as TRAINER.HICROPL.PREC); released default "fp16" (CUDA only).
    cfg.TRAINER.COOP.PREC = "fp16"
    # Where the class-name tokens sit, one of CLASS_TOKEN_POSITIONS: "end" ([SOT] ctx name . EOT), "middle"
    # ([SOT] ctx[:M/2] name ctx[M/2:] . EOT) or "front" ([SOT] name ctx . EOT).
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"

    cfg.TRAINER.COCOOP = CN()
    # As TRAINER.COOP: context length (int >= 1, ignored with CTX_INIT), init words (str), precision (PRECISIONS).
    cfg.TRAINER.COCOOP.N_CTX = 16
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"

    cfg.TRAINER.KGCOOP = CN()
    # As TRAINER.COOP (KgCoOp is unified CoOp with the class token at the end): N_CTX (int >= 1, ignored with
    # CTX_INIT), CTX_INIT (str; published "a photo of a"), PREC (PRECISIONS).
    cfg.TRAINER.KGCOOP.N_CTX = 4
    cfg.TRAINER.KGCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.KGCOOP.PREC = "fp16"
    # Weight W of the knowledge term W * (1 - mean_k cos(w_k, w_k^clip)) (float >= 0; published 8.0).
    cfg.TRAINER.KGCOOP.W = 8.0

    cfg.TRAINER.TCP = CN()
    # Context length M (int >= 1; published 4), CTX_INIT (str; published "" = random), PREC (PRECISIONS).
    cfg.TRAINER.TCP.N_CTX = 4
    cfg.TRAINER.TCP.CTX_INIT = ""
    cfg.TRAINER.TCP.PREC = "fp16"
    # Text block (0-based) at whose input the class-aware tokens replace the context positions (int in
    # [1, text layers - 1]; published 8 of ViT-B/16's 12).
    cfg.TRAINER.TCP.LAYER = 8
    # Weight of the knowledge term W * (1 - mean_k cos(w_k, w_k^clip)) (float >= 0; published 8.0).
    cfg.TRAINER.TCP.W = 8.0

    cfg.TRAINER.LP = CN()
    # Linear-probe CLIP (trainers/linear_probe.py): rounds of the interval search for C after the coarse sweep
    # (int >= 0; published 8).
    cfg.TRAINER.LP.NUM_STEP = 8
