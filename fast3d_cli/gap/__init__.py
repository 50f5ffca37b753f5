"""GAP (Global Attention Prediction) network of Fast3D (spec §4): model, checkpoints, inputs, metrics.

Exports load lazily (the configuration and settings need no torch)."""

from fast3d_cli._lazy import lazy_exports

_EXPORTS = {
    "GAPConfig": "configuration",
    "load_gap": "io",
    "load_official_gap_checkpoint": "io",
    "save_gap": "io",
    "GAPModel": "modeling",
    "captured_mass": "modeling",
    "kl_distribution_loss": "modeling",
    "kl_per_sample": "modeling",
    "pairwise_locations": "modeling",
    "topk_f1": "modeling",
    "validation_metrics": "modeling",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
