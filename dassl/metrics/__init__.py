"""Metrics (``compute_accuracy``)."""
from .accuracy import compute_accuracy
