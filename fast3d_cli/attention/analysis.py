"""Diagnostics of attention maps: do they find the object a grounding question is about?"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from fast3d_cli.data import Sample
from fast3d_cli.metrics import parse_object_ids


def target_proposals(samples: Sequence[Sample]) -> list[int | None]:
    """The answer proposal of each ScanRefer-style sample (its ``<OBJnnn>`` reference), else None."""
    out: list[int | None] = []
    for sample in samples:
        ids = [i for ref in sample.ref_captions if isinstance(ref, str) for i in parse_object_ids(ref)]
        out.append(ids[0] if ids else None)
    return out


def target_hit_rate(maps: np.ndarray, targets: Sequence[int | None], k: int) -> float:
    """Share of samples whose target object is among the ``k`` highest-scoring objects."""
    hits = [t in np.argsort(-row)[:k] for row, t in zip(maps, targets, strict=True) if t is not None]
    return float(np.mean(hits)) if hits else float("nan")


def same_scene_contrast(maps: np.ndarray, samples: Sequence[Sample], targets: Sequence[int | None]) -> dict:
    """For pairs of questions about different objects of one scene: how often the maps' top object differs,
    and the mean cosine similarity of the maps (1.0 would mean the attention ignores the question)."""
    by_scene: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_scene.setdefault(sample.scene_id, []).append(i)
    differs, cosines = [], []
    for rows in by_scene.values():
        for a, b in combinations(rows, 2):
            if targets[a] is None or targets[a] == targets[b]:
                continue
            differs.append(int(np.argmax(maps[a]) != np.argmax(maps[b])))
            cosines.append(
                float(maps[a] @ maps[b] / (np.linalg.norm(maps[a]) * np.linalg.norm(maps[b]) + 1e-12))
            )
    return {
        "pairs": len(differs),
        "top_object_differs": float(np.mean(differs)) if differs else float("nan"),
        "mean_cosine": float(np.mean(cosines)) if cosines else float("nan"),
    }


def evidence_in_top_k(maps: np.ndarray, samples: Sequence[Sample], k: int = 10) -> dict[str, float | int]:
    """How often all of a sample's evidence objects (the ``evidence`` annotation of the sample world) are
    among the ``k`` highest-scoring objects of its map. Samples without evidence (e.g. "No." answers) are
    not counted; ``samples`` and ``maps`` rows correspond."""
    hits, partial = [], []
    for row, sample in zip(maps, samples, strict=True):
        if not sample.evidence:
            continue
        top = set(np.argsort(-row, kind="stable")[:k].tolist())
        found = [j in top for j in sample.evidence]
        hits.append(all(found))
        partial.append(np.mean(found))
    return {
        "samples": len(hits),
        "all_in_top_k": float(np.mean(hits)) if hits else float("nan"),
        "share_in_top_k": float(np.mean(partial)) if partial else float("nan"),
    }
