"""``fast3d extract --model-family llava``: the LLM's attention over the image tokens -> attention store.

The same store as Chat-Scene's (:mod:`fast3d_cli.stores`), one group ``image_qa/all`` with a row per
question (``sample_index`` = the question's line order among the QA file's questions). A "unit" is one
image token, so ``n_objects == n_visual`` (patches per image, or frames x patches for a video):

* ``object_scores``: teacher-forced prefill of ``prompt + " " + answers[0]``; the head- and layer-mean
  attention of every row after the image tokens to each image token, averaged over those rows
  (:func:`fast3d_cli.pruning.generic.extract_maps`);
* ``prompt_scores``: the same over the prompt rows only (the question, before the answer).

Chunks are written whole and resumed like every store (single process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli import __version__
from fast3d_cli.attention.extract import prepare_store
from fast3d_cli.data.image_qa import ImageQASample
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint
from fast3d_cli.stores import StoreLocation, fill_missing_chunks, open_store, writer_lock
from fast3d_cli.stores.chunks import ProgressCallback

GROUP = ("image_qa", "all")


@dataclass(frozen=True)
class ImageQAExtractSettings:
    batch_size: int = 8
    chunk_size: int = 64

    def aggregation(self, n_layers: int, dtype: str) -> dict[str, Any]:
        return {
            "family": "llava",
            "layers": f"mean over all {n_layers}",
            "heads": "mean",
            "query_rows": 'text after the image tokens: "{prompt} {answers[0]}" (no EOS)',
            "prompt_rows": "the prompt's text rows after the image tokens",
            "object_pooling": "none: one unit per image token",
            "chunk_size": self.chunk_size,
            "dtype": dtype,
        }


def unit_maps(adapter: Any, batch: Any, prompts: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """{"object_scores", "prompt_scores"} [B, n_units] of one batch (see the module docstring)."""
    import torch

    from fast3d_cli.attention.maps import adapter_maps

    with torch.inference_mode():
        inputs = adapter.build_inputs(batch, answers)
        text_len = inputs.attention_mask.shape[1] - inputs.text_start
        prompt_len = torch.tensor(
            [len(ids) - start - inputs.n_visual for ids, start in
             (adapter.token_ids(p, None, inputs.n_visual) for p in prompts)]
        )  # fmt: skip
        if bool((text_len < 1).any()):
            raise UserError("every question needs text after its image tokens to extract maps from")
        maps = adapter_maps(adapter, inputs, text_len, prompt_len)
    return {"object_scores": maps.object_scores, "prompt_scores": maps.prompt_scores}


def extract_image_qa(
    adapter: Any,
    batcher: Callable[[Sequence[ImageQASample]], Any],
    samples: Sequence[ImageQASample],
    model_fingerprint: str,
    qa_file: Path,
    settings: ImageQAExtractSettings,
    out: StoreLocation | Path | str,
    *,
    command: str = "",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Fill the store ``out`` with the maps of ``samples``; returns {"computed": n, "store": summary}."""
    llm = adapter.language_model
    n_layers = llm.config.num_hidden_layers
    dtype = str(next(llm.parameters()).dtype).removeprefix("torch.")
    n_visual = adapter.build_inputs(batcher(samples[:1])).n_visual
    qa_fingerprint = files_fingerprint([qa_file])
    root_attrs = {
        "kind": "attention",
        "model": model_fingerprint,
        "data": qa_fingerprint,
        "aggregation": settings.aggregation(n_layers, dtype),
        "command": command,
        "version": __version__,
        "n_objects": n_visual,
        "n_visual": n_visual,
        "n_layers": n_layers,
        "chunk_size": settings.chunk_size,
    }
    out = StoreLocation.parse(out)
    key = "/".join(GROUP)

    def compute(chunk: Sequence[ImageQASample]) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, len(chunk), settings.batch_size):
            rows = chunk[start : start + settings.batch_size]
            batch = batcher(rows)
            maps = unit_maps(adapter, batch, batch.prompts, [s.answers[0] for s in rows])
            parts.append({k: v.float().cpu().numpy() for k, v in maps.items()})
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        for name, values in arrays.items():
            if not np.isfinite(values).all():
                raise UserError(f"non-finite {name} in the chunk starting at question {chunk[0].id!r}")
        return arrays

    with writer_lock(out):
        prepare_store(out, root_attrs, {key: (len(samples), qa_fingerprint)}, False, overwrite)
        store = open_store(out, kind="attention", read_only=False)
        computed = fill_missing_chunks(store.group(*GROUP), samples, compute, 0, 1, progress)
    return {"computed": computed, "store": store.summary(), "settings": asdict(settings)}
