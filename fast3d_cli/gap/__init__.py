"""GAP (Global Attention Prediction) network of Fast3D (spec §4): model, checkpoints, inputs, metrics."""

from fast3d_cli.gap.configuration import GAPConfig
from fast3d_cli.gap.io import load_gap, load_official_gap_checkpoint, save_gap
from fast3d_cli.gap.modeling import (
    GAPModel,
    captured_mass,
    kl_distribution_loss,
    kl_per_sample,
    pairwise_locations,
    topk_f1,
    validation_metrics,
)

__all__ = [
    "GAPConfig",
    "GAPModel",
    "captured_mass",
    "kl_distribution_loss",
    "kl_per_sample",
    "load_gap",
    "load_official_gap_checkpoint",
    "pairwise_locations",
    "save_gap",
    "topk_f1",
    "validation_metrics",
]
