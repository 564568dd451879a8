"""Trainers: ``TrainerBase`` -> ``SimpleTrainer`` -> ``TrainerX``, the registry and ``build_trainer``."""
from .build import TRAINER_REGISTRY, build_trainer
from .trainer import SimpleTrainer, TrainerBase, TrainerX
