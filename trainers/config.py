"""Config nodes added by the trainers of this library (called from ``train.py``'s ``extend_cfg``).

yacs refuses keys that do not exist in the defaults tree, so every key a trainer yaml may set is
declared here, before any yaml or command-line value is merged. Types matter: yacs rejects
int <-> float changes, so float defaults are written with a dot.
"""
from yacs.config import CfgNode as CN


def add_trainer_cfg(cfg: CN) -> None:
    """Add ``TRAINER.HICROPL`` (and the other trainer nodes of this library) to ``cfg`` in place."""
    cfg.TRAINER.HICROPL = CN()
    # Prompt length m: learnable tokens per layer in each tower (configs: 16; cross-dataset 2).
    cfg.TRAINER.HICROPL.N_CTX = 2
    # Words whose embeddings initialise the first-layer text prompts; used only when N_CTX <= 4 (SPEC F4).
    cfg.TRAINER.HICROPL.CTX_INIT = "a photo of a"
    # Number of layers J (1..L) that receive fresh prompts in both towers (configs: 12; cross-dataset 6).
    cfg.TRAINER.HICROPL.PROMPT_DEPTH = 9
    # Layer k where the mapping switches from text->vision (layers [0, k)) to vision->text ([k, J)).
    cfg.TRAINER.HICROPL.CROSS_LAYER = 6
    # Weight lambda of the consistency loss (configs: 12.).
    cfg.TRAINER.HICROPL.LAMBD = 10.0
    # Precision: "fp16" (released behaviour, CUDA only), "fp32", "amp" (fp16 autocast + GradScaler), "bf16".
    cfg.TRAINER.HICROPL.PREC = "fp16"
    # Frozen teacher image encoder (a clip.load spec); equal to the backbone -> the backbone's tower is shared.
    cfg.TRAINER.HICROPL.TEACHER_NAME = "ViT-B/16"
    # "released": mapper outputs overwrite the mapped prompts in place on every forward (published numbers);
    # "differentiable": mapped prompts are computed as tensors each forward, gradients reach mappers/LKP/proxies.
    cfg.TRAINER.HICROPL.MAPPER_MODE = "released"
    # Class-description JSON ({class name: [sentence, ...]}); "" -> descriptions/<dataset key>.json.
    cfg.TRAINER.HICROPL.DESCRIPTIONS = ""
