"""The attention predictors ``fast3d train-gap --predictor`` trains: a GAP config plus its training target.

=============  ==========================================================  ==============================
predictor      network                                                     target (per sample, [objects])
=============  ==========================================================  ==============================
gap            Fast3D's GAP (RoBERTa + CMT spatial decoder + MLP head)      ``object_scores``: the
                                                                           attention map averaged over
                                                                           all layers (spec §3)
efficient3d    Efficient3D's DVTIE: the same network with DHCT, a learnable  ``debiased_object_scores``:
               cross-attention bias in the last CMT layers                 the map averaged over layers
                                                                           >= 2 (shallow layers dropped)
=============  ==========================================================  ==============================

Efficient3D (github.com/sol924/Efficient3D) trains DVTIE with the same distribution-matching KL loss as
the GAP (``DVTIE/modeling_dvtie.py``); see docs/methods-before-llm.md for what its code shows about the
target and why the two shallowest layers are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fast3d_cli.errors import UserError

# Efficient3D's debiasing drops the attention of layers 0 and 1 (its dataset code keeps ``a_map[:, 2:]``
# before the layer mean; its layer-wise adaptive branch starts at ``adaptive_start_layer = 2``).
SHALLOW_LAYERS = 2


@dataclass(frozen=True)
class PredictorSpec:
    name: str
    target: str  # the array (or derived target) of an attention store it learns
    config: dict[str, Any] = field(default_factory=dict)  # GAPConfig fields it sets (--gap-config wins)
    help: str = ""


PREDICTORS: dict[str, PredictorSpec] = {
    spec.name: spec
    for spec in (
        PredictorSpec("gap", "object_scores", help="Fast3D's GAP (all-layer mean attention)"),
        PredictorSpec(
            "efficient3d",
            "debiased_object_scores",
            {"use_dhct": True},
            help="Efficient3D's DVTIE (DHCT; attention of layers >= 2; needs extract --keep-layers)",
        ),
    )
}


def get_predictor(name: str) -> PredictorSpec:
    if name not in PREDICTORS:
        raise UserError(f"unknown --predictor {name!r}; choose one of {', '.join(PREDICTORS)}")
    return PREDICTORS[name]


def debiased_object_scores(layer_scores: np.ndarray) -> np.ndarray:
    """[n, L, M] per-layer object maps -> [n, M]: the mean over layers ``SHALLOW_LAYERS`` .. L-1."""
    if layer_scores.ndim != 3:
        raise ValueError(f"layer_scores must be [n, layers, objects], got {layer_scores.shape}")
    if layer_scores.shape[1] <= SHALLOW_LAYERS:
        raise UserError(
            f"the debiased target drops the first {SHALLOW_LAYERS} layers, but the maps have only "
            f"{layer_scores.shape[1]} layers"
        )
    return layer_scores[:, SHALLOW_LAYERS:].astype(np.float64).mean(axis=1).astype(np.float32)


# derived targets: name -> (stored array it reads, how it is reduced)
DERIVED_TARGETS = {"debiased_object_scores": ("layer_scores", debiased_object_scores)}
