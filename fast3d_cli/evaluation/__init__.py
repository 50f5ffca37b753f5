"""Evaluation: generate answers for a task set, save per-sample predictions, score them (spec §6)."""

from fast3d_cli.evaluation.predictions import PredictionLog
from fast3d_cli.evaluation.runner import EvalSettings, run_eval, run_pruned_eval

__all__ = ["EvalSettings", "PredictionLog", "run_eval", "run_pruned_eval"]
