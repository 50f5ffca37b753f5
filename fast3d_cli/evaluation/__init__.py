"""Evaluation: generate answers for a task set, save per-sample predictions, score them (spec §6).

Exports load lazily (no torch until one is used)."""

from fast3d_cli._lazy import lazy_exports

_EXPORTS = {
    "PredictionLog": "predictions",
    "EvalSettings": "runner",
    "run_eval": "runner",
    "run_pruned_eval": "runner",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
