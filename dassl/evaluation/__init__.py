"""Evaluators (``build_evaluator``, ``EVALUATOR_REGISTRY``, ``Classification``)."""
from .build import EVALUATOR_REGISTRY, build_evaluator
from .evaluator import Classification, EvaluatorBase, confusion_matrix, macro_f1_score
