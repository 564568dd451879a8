"""The default config tree (yacs). Every key a yaml file or ``KEY VALUE`` pair may set must exist here.

yacs rules worth knowing: a merged value must have the type of the default (int <-> float is refused,
so float defaults are written with a dot; list <-> tuple is accepted); strings go through
``ast.literal_eval`` first (``1e-3`` -> 0.001, ``(224, 224)`` -> tuple), unparsable ones stay strings.

Keys marked "(compat)" are read by nothing in this engine; they exist so that yaml files written for
the original Dassl merge without "Non-existent key" errors. The DA/DG/SSL trainer sub-nodes of the
original Dassl (``TRAINER.MCD``, ``TRAINER.FIXMATCH``, ...) are omitted.
"""
from yacs.config import CfgNode as CN

_C = CN()

# Config version (compat).
_C.VERSION = 1
# Folder for log.txt, results.json, tensorboard/ and checkpoints (<OUTPUT_DIR>/<model name>/...).
_C.OUTPUT_DIR = "./output"
# Folder to resume from ("" -> OUTPUT_DIR itself: rerunning a command in a folder that holds
# checkpoints continues that run).
_C.RESUME = ""
# Resuming with a config whose run identity (dassl/engine/identity.py: seed, data, model, optimiser and schedule,
# trainer node) differs from the checkpoint's stops with an error naming the keys; True -> continue under the new
# values and record the change (checkpoints, identity.json, results.json "model_identity_changes"). Never
# accepts a change of a key the checkpoint's weights depend on (the trainer's load_keys). True/False.
_C.ACCEPT_CONFIG_CHANGE = False
# Random seed for Python, NumPy and torch; negative -> not seeded (few-shot caches are then named seed_-1).
_C.SEED = -1
# Use CUDA when available (True/False); False or no GPU -> CPU.
_C.USE_CUDA = True
# Print loading/building messages (True/False).
_C.VERBOSE = True

###########################
# Input
###########################
_C.INPUT = CN()
# Image size (height, width) fed to the model after the transforms.
_C.INPUT.SIZE = (224, 224)
# Resize interpolation: "bilinear", "bicubic" or "nearest" (CLIP configs: "bicubic").
_C.INPUT.INTERPOLATION = "bilinear"
# Train-time transforms, any of: "random_resized_crop", "random_crop", "random_flip", "center_crop",
# "normalize" (CLIP configs: random_resized_crop, random_flip, normalize). The pipeline order is fixed,
# not the list order. Test time always uses resize(shorter side) -> center crop -> [normalize].
_C.INPUT.TRANSFORMS = ()
# True -> no transform at all (the loaders return PIL images).
_C.INPUT.NO_TRANSFORM = False
# Per-channel mean/std of "normalize" (defaults: ImageNet; CLIP configs use CLIP's statistics).
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
# Zero padding (pixels) of "random_crop".
_C.INPUT.CROP_PADDING = 4
# Scale range (min, max area fraction) of "random_resized_crop".
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
# (compat) Cutout: number of holes and their side length.
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
# (compat) Gaussian noise: mean and std.
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
# RandAugment (INPUT.TRANSFORMS "randaugment"): number of ops drawn per image (int >= 0) and their magnitude
# (int in [0, 30]; dassl/data/transforms/randaugment.py).
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
# (compat) Color jitter: brightness, contrast, saturation, hue.
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
# (compat) Random grayscale probability.
_C.INPUT.RGS_P = 0.2
# (compat) Gaussian blur: probability and kernel size.
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

###########################
# Dataset
###########################
_C.DATASET = CN()
# Root folder that holds one sub-folder per dataset (set by --root).
_C.DATASET.ROOT = ""
# Registered dataset class name (e.g. "OxfordPets", "ToyShapes"); train.py --list-datasets shows them.
_C.DATASET.NAME = ""
# Source/target domain names (only counted and printed by this engine).
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
# (compat) Number of labelled images for semi-supervised learning.
_C.DATASET.NUM_LABELED = -1
# Few-shot: K training images per class (validation gets min(K, 4)); < 1 -> use all data.
_C.DATASET.NUM_SHOTS = -1
# (compat) Validation fraction, STL-10 fold, CIFAR-C corruption type/level, all-unlabelled switch.
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False

###########################
# Dataloader
###########################
_C.DATALOADER = CN()
# Worker processes per loader (0 -> load in the main process).
_C.DATALOADER.NUM_WORKERS = 4
# Apply the train transform K times to each image (K >= 1; K > 1 -> "img" is a list of K tensors).
_C.DATALOADER.K_TRANSFORMS = 1
# Also return the un-augmented image as "img0" (True/False).
_C.DATALOADER.RETURN_IMG0 = False
# Labelled training loader: sampler ("RandomSampler" or "SequentialSampler") and batch size.
# BATCH_SIZE is the global batch: under torchrun with N processes each takes BATCH_SIZE / N samples of
# every batch (must divide; only "RandomSampler" there), so results match one process with the same value.
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
# (compat) Domains / instances per batch of domain- or class-balanced samplers.
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
_C.DATALOADER.TRAIN_X.N_INS = 16
# Unlabelled training loader (built only for datasets with a train_u split): same settings as
# TRAIN_X if SAME_AS_X, else its own.
_C.DATALOADER.TRAIN_U = CN()
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
# Validation and test loaders: sampler and batch size (under torchrun: ceil(BATCH_SIZE / N) per process,
# each process evaluating its own 1/N of the split).
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

###########################
# Model
###########################
_C.MODEL = CN()
# Checkpoint whose matching entries are copied into the model (load_pretrained_weights); "" -> none.
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
# Backbone name; CLIP trainers take a clip.load spec ("ViT-B/16", "RN50", "random:tiny", a file path).
_C.MODEL.BACKBONE.NAME = ""
# (compat) Load ImageNet weights into a Dassl backbone.
_C.MODEL.BACKBONE.PRETRAINED = True
# (compat) Classification head of Dassl's generic model: name, hidden sizes, activation, batch norm, dropout.
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

###########################
# Optimization
###########################
_C.OPTIM = CN()
# Optimizer: "adam", "amsgrad", "sgd", "rmsprop", "radam" or "adamw".
_C.OPTIM.NAME = "adam"
# Base learning rate (float).
_C.OPTIM.LR = 0.0003
# L2 weight decay (coupled for adam/sgd, decoupled for adamw).
_C.OPTIM.WEIGHT_DECAY = 5e-4
# Momentum of sgd and rmsprop.
_C.OPTIM.MOMENTUM = 0.9
# sgd dampening (the key's spelling is Dassl's) and Nesterov switch.
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
# rmsprop smoothing constant.
_C.OPTIM.RMSPROP_ALPHA = 0.99
# Adam's epsilon (only the "adam" optimizer reads it; HiCroPL configs set 1e-3). From the HiCroPL copy of Dassl.
_C.OPTIM.EPS = 1e-8
# Betas of adam, amsgrad, radam and adamw.
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
# Staged lr: child modules named in NEW_LAYERS train at LR, all others at LR * BASE_LR_MULT.
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
# lr schedule, stepped once per epoch: "cosine" (to 0 at MAX_EPOCH), "single_step" (x GAMMA every
# STEPSIZE[-1] epochs; <= 0 -> MAX_EPOCH) or "multi_step" (x GAMMA at each epoch in STEPSIZE).
_C.OPTIM.LR_SCHEDULER = "single_step"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
# Number of training epochs.
_C.OPTIM.MAX_EPOCH = 10
# Warm-up epochs before the schedule above starts (<= 0 -> no warm-up).
_C.OPTIM.WARMUP_EPOCH = -1
# Warm-up type: "constant" (WARMUP_CONS_LR) or "linear" (WARMUP_MIN_LR at epoch 0, then LR * e / WARMUP_EPOCH).
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
# True -> the schedule restarts its epoch count at 0 when the warm-up ends (every config uses True).
_C.OPTIM.WARMUP_RECOUNT = True

###########################
# Train
###########################
_C.TRAIN = CN()
# Save model.pth.tar-<E> every N epochs (<= 0 -> only after the last epoch).
_C.TRAIN.CHECKPOINT_FREQ = 0
# Print the progress line every N batches (every batch when an epoch has fewer than N).
_C.TRAIN.PRINT_FREQ = 10
# (compat) Which loader defines an epoch in TrainerXU: "train_x", "train_u" or "smaller_one".
_C.TRAIN.COUNT_ITER = "train_x"
# Show a tqdm bar (stderr) over the batches of each training epoch (True/False); not in Dassl.
_C.TRAIN.PROGRESS_BAR = False
# Count the FLOPs of the run's first training step with torch.utils.flop_counter.FlopCounterMode (True/False); not
# in Dassl. Stored in results.json (cost.train_step_flops); the counted step trains exactly as an uncounted one.
_C.TRAIN.COUNT_FLOPS = True

###########################
# Test
###########################
_C.TEST = CN()
# Registered evaluator name ("Classification").
_C.TEST.EVALUATOR = "Classification"
# Also print per-class accuracies and their mean (True/False).
_C.TEST.PER_CLASS_RESULT = False
# Save the row-normalised confusion matrix to <OUTPUT_DIR>/cmat.pt (True/False).
_C.TEST.COMPUTE_CMAT = False
# Not in Dassl (files of one evaluation in a new <OUTPUT_DIR>/evaluations/<split>-<stage>-ep<E>-<time>/ folder,
# named in its results.json record, see dassl/evaluation/outputs.py):
# write predictions.csv (per image: path, label, top-5 classes and probabilities), per_class.csv and
# confusion_matrix.csv (True/False). TEST.PER_CLASS_RESULT / COMPUTE_CMAT alone also write their file there.
_C.TEST.SAVE_PREDICTIONS = False
# Draw the reliability diagram of every evaluation as reliability.png (True/False).
_C.TEST.RELIABILITY_DIAGRAM = False
# Skip every evaluation during and after training (True/False).
_C.TEST.NO_TEST = False
# Split of the final / --eval-only evaluation: "test" or "val".
_C.TEST.SPLIT = "test"
# Model tested after training: "best_val" (validate after every epoch, keep the best as
# model-best.pth.tar, ties -> later epoch; HiCroPL's choice) or "last_step" (the last epoch's model).
_C.TEST.FINAL_MODEL = "best_val"

###########################
# Trainer
###########################
_C.TRAINER = CN()
# Registered trainer class name (e.g. "HiCroPL"); train.py --list-trainers shows them.
_C.TRAINER.NAME = ""
