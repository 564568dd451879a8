"""Config nodes added by the trainers of this library (called from ``train.py``'s ``extend_cfg``).

yacs refuses keys that do not exist in the defaults tree, so every key a trainer yaml may set is
declared here, before any yaml or command-line value is merged. Types matter: yacs rejects
int <-> float changes, so float defaults are written with a dot.

The values are validated in one place: ``trainers.hicropl.check_hicropl_cfg`` (HiCroPL),
``trainers.zsclip.check_zsclip_cfg`` (zero-shot CLIP) and each comparison method's ``check_cfg`` (trainers/coop.py,
cocoop.py, kgcoop.py, tcp.py, linear_probe.py).
"""
import torch
from yacs.config import CfgNode as CN

# Allowed values of the string keys below (checked by the trainers).
PRECISIONS = ("fp16", "fp32", "amp", "bf16")
MAPPER_MODES = ("released", "differentiable")
ZS_CLASSIFIERS = ("template", "descriptions")
# Ablation switches of TRAINER.HICROPL (the paper's Tables 4, 6, 7, 12, 13; documented at the keys below).
FLOWS = ("t2i_i2t", "i2t_t2i", "t2i", "i2t", "none")
MAPPER_SCALES = ("multi", "single")
COMPRESSIONS = ("lkp", "mean", "mlp")
CONSISTENCY_TARGETS = ("descriptions", "template", "imagenet_templates", "random_description")
CONSISTENCY_CRITERIA = ("cosine", "l1", "mse")
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
EVAL_FEATURE_CACHES = ("disk", "memory", "off")


def add_trainer_cfg(cfg: CN) -> None:
    """Add ``TRAINER.HICROPL``, ``ZSCLIP``, ``COOP``, ``COCOOP``, ``KGCOOP``, ``TCP`` and ``LP`` to ``cfg`` in place,
    and ``OPTIM.EPS`` when the engine lacks it."""
    if "OPTIM" in cfg and "EPS" not in cfg.OPTIM:
        # Adam's epsilon (float > 0; HiCroPL configs: 1e-3). HiCroPL's vendored Dassl (and ours) declare it; the
        # original Dassl.pytorch does not and builds Adam with torch's 1e-8, so our trainers apply it themselves
        # (apply_optim_eps) and the yamls mean the same on either engine.
        cfg.OPTIM.EPS = 1e-8
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
    # Weight lambda of the consistency loss (float >= 0; configs: 12.). 0. switches the consistency loss off
    # (Table 11, "w/o L_cons").
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
    # --- Ablation switches (paper Tables 4-7, 11-13; defaults = HiCroPL as published; scripts/hicropl/ablation.sh).
    # Direction of the knowledge flow (Table 4), one of FLOWS; k = CROSS_LAYER, J = PROMPT_DEPTH:
    #   "t2i_i2t" (published): layers [0, k) text->image, layers [k, J) image->text;
    #   "i2t_t2i": reversed, layers [0, k) image->text, layers [k, J) text->image;
    #   "t2i" / "i2t": unidirectional, one flow over all J prompted layers (k is ignored);
    #   "none": no knowledge flow, independent learnable prompts in both towers (IVLP-style; Table 11 "w/o BKF"):
    #           no mappers, compression modules or proxies; initialisation as published otherwise.
    # The target tower's prompts of a flow are written by its mapper; the source tower's prompts stay free.
    cfg.TRAINER.HICROPL.FLOW = "t2i_i2t"
    # Mapper scale of the text->image flow and of the image->text flow (Table 6), one of MAPPER_SCALES each:
    #   "multi" (published): the prompts of every layer of the flow attend to the knowledge tokens of all layers of
    #           the flow (the mapper sees every layer's summary at once);
    #   "single": the prompts of layer i attend to the knowledge token of layer i only (MaPLe-like per-layer
    #           mapping), with the same mapper module and parameters; the mapped prompts of layer i then depend on
    #           no other layer's prompts.
    cfg.TRAINER.HICROPL.T2I_SCALE = "multi"
    cfg.TRAINER.HICROPL.I2T_SCALE = "multi"
    # How a layer's m source prompts are compressed into its knowledge token before the mapper (Table 7), one of
    # COMPRESSIONS: "lkp" (published: layer-specific knowledge proxy, attention from a learnable proxy token);
    # "mean": plain average of the layer's m prompts (no parameters, no proxies);
    # "mlp": a 2-layer MLP per layer (Linear D->D, QuickGELU, Linear D->D, D = the source tower's width) applied to
    # every prompt token, then averaged over the m tokens (no proxies). Its modules are stored where the LKP modules
    # are (attn_pooling_text_nets / attn_pooling_visual_nets).
    cfg.TRAINER.HICROPL.COMPRESSION = "lkp"
    # Frozen text features the text consistency term pulls the fused class features toward (Table 12), one of
    # CONSISTENCY_TARGETS. The fused logits always use the averaged descriptions W; only the loss target changes.
    #   "descriptions" (published): W itself, per class the normalised mean of its description sentences' features;
    #   "template": the features of "a photo of a {class}.";
    #   "imagenet_templates": per class the normalised mean over CLIP's 7-template ImageNet ensemble ("itap of a
    #       {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    #       "art of the {}.", "a photo of the small {}."; trainers.hicropl.IMAGENET_TEMPLATES);
    #   "random_description": each training step, per class the features of one of its description sentences
    #       drawn uniformly at random (CoPrompt-style).
    cfg.TRAINER.HICROPL.CONSISTENCY_TARGET = "descriptions"
    # Distance of both consistency terms (Table 13), one of CONSISTENCY_CRITERIA, between the unit-norm fused
    # features and their frozen targets: "cosine" (published: 1 - mean cosine similarity), "l1" / "mse" (mean
    # absolute / squared difference over all elements, PyTorch's F.l1_loss / F.mse_loss).
    cfg.TRAINER.HICROPL.CONSISTENCY_CRITERION = "cosine"
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

    cfg.TRAINER.IVLP = CN()
    # IVLP (independent deep prompts in both towers; trainers/ivlp.py). Per tower: prompt length m (int >= 1 when its
    # depth > 0) and depth J (int, 0 <= J <= the tower's layers; J = layers 0..J-1 get fresh prompts, 0 = no prompts).
    # PROMPT_DEPTH_TEXT 0 is VPT-deep: the classifier is the frozen "a photo of a {class}." features.
    # Released defaults (train.py of the IVLP repo); published configs in configs/trainers/IVLP/.
    cfg.TRAINER.IVLP.N_CTX_TEXT = 2
    cfg.TRAINER.IVLP.N_CTX_VISION = 2
    cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9
    cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 9
    # Words initialising the layer-0 text prompts (str, "_" = space): used when N_CTX_TEXT <= 4, the template is then
    # "<CTX_INIT> <class>." with its first N_CTX_TEXT tokens learnable (HiCroPL's rule); "" = N(0, 0.02^2) init.
    cfg.TRAINER.IVLP.CTX_INIT = "a photo of a"
    # Precision, one of PRECISIONS; released "fp16" (CUDA only).
    cfg.TRAINER.IVLP.PREC = "fp16"

    cfg.TRAINER.MAPLE = CN()
    # MaPLe (trainers/maple.py): prompt length m in both towers (int >= 1; published 2), depth J (int, 1 <= J <= the
    # towers' layers; published 9 base-to-novel, 3 cross-dataset), CTX_INIT (str, HiCroPL's rule: used when
    # N_CTX <= 4; published "a photo of a"), PREC (PRECISIONS; released "fp16"). Released train.py defaults.
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PREC = "fp16"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9

    cfg.TRAINER.PROMPTSRC = CN()
    # PromptSRC (trainers/promptsrc.py): IVLP's prompt keys (see TRAINER.IVLP; PROMPT_DEPTH_TEXT >= 1 here) with the
    # released defaults (4 + 4 tokens, depth 9).
    cfg.TRAINER.PROMPTSRC.N_CTX_TEXT = 4
    cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 4
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT = 9
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION = 9
    cfg.TRAINER.PROMPTSRC.CTX_INIT = "a photo of a"
    cfg.TRAINER.PROMPTSRC.PREC = "fp16"
    # Weights of the L1 terms toward the frozen text (60 templates) / image features (int >= 0, as released, so
    # the released yamls merge; published 25, 10).
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10
    # Gaussian prompt aggregation: mean and standard deviation (int, std > 0, as released) over the 1-based epochs
    # (published base-to-novel 15 / 1, cross-dataset 6 / 10, few-shot 30 / 30 or 45 / 5).
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1

    cfg.TRAINER.MMA = CN()
    # MMA (trainers/mma.py). Text input "<TEXT_CTX_INIT> <class>." (str; published "a photo of a").
    cfg.TRAINER.MMA.TEXT_CTX_INIT = "a photo of a"
    # Adapted blocks ADAPTER_START..ADAPTER_END, 1-based, both towers (ints, 1 <= start <= end <= layers; published
    # 5 / 12; cross-dataset 9 per the paper), bottleneck width r (int >= 1; 32), branch scale alpha (float > 0; 0.001).
    cfg.TRAINER.MMA.ADAPTER_START = 5
    cfg.TRAINER.MMA.ADAPTER_END = 12
    cfg.TRAINER.MMA.ADAPTER_DIM = 32
    cfg.TRAINER.MMA.ADAPTER_SCALE = 0.001
    # Precision, one of PRECISIONS; released "amp" (fp32 weights, fp16 autocast + GradScaler; CUDA only).
    cfg.TRAINER.MMA.PREC = "amp"

    cfg.TRAINER.COPROMPT = CN()
    # CoPrompt (trainers/coprompt.py; the released code's TRAINER.CoPrompt + TRAINER.W / TRAINER.DISTILL). Prompts as
    # TRAINER.MAPLE: N_CTX (int >= 1), CTX_INIT (str), PREC (PRECISIONS), PROMPT_DEPTH (int >= 1); released defaults.
    cfg.TRAINER.COPROMPT.N_CTX = 2
    cfg.TRAINER.COPROMPT.CTX_INIT = "a photo of a"
    cfg.TRAINER.COPROMPT.PREC = "fp16"
    cfg.TRAINER.COPROMPT.PROMPT_DEPTH = 9
    # Weight lambda of the two consistency terms (float >= 0; train.py default 8.0, per dataset 0.1-8.0).
    cfg.TRAINER.COPROMPT.W = 8.0
    # Distance of the consistency terms: "cosine" (1 - mean cosine; all configs) or "mse".
    cfg.TRAINER.COPROMPT.DISTILL = "cosine"
    # Description file (str path; "" -> descriptions/<dataset key>.json); every class needs the same sentence count.
    cfg.TRAINER.COPROMPT.DESCRIPTIONS = ""


def apply_optim_eps(optimizer: torch.optim.Optimizer, optim_cfg: CN) -> None:
    """Set ``optim_cfg.EPS`` as the epsilon of the optimizer when ``optim_cfg.NAME`` is "adam" (others untouched).

    Our engine's ``build_optimizer`` already does this for "adam"; the original Dassl's ignores the key.
    """
    if optim_cfg.NAME == "adam":
        for group in optimizer.param_groups:
            group["eps"] = optim_cfg.EPS
