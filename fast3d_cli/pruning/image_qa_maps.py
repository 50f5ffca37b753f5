"""The maps of ``oracle``/``oracle+sap`` for the ``llava`` family: an attention store from
``fast3d extract --model-family llava`` (group ``image_qa/all``, one row of image-token scores per question),
read and checked before the model loads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fast3d_cli.data.image_qa import ImageQASample
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint
from fast3d_cli.stores import StoreLocation, open_store

GROUP = ("image_qa", "all")


def load_question_maps(
    path: StoreLocation | Path | str,
    model_fingerprint: str,
    qa_file: Path,
    samples: Sequence[ImageQASample],
    n_visual: int | None,
    force: bool = False,
) -> dict[int, np.ndarray]:
    """{question index: [n_visual] scores} for ``samples``, from a store made for this model, QA file and
    image size (``force``: accept another model or QA file)."""
    store = open_store(path, kind="attention")
    if not force:
        problems = [] if store.attrs.get("model") == model_fingerprint else ["model"]
        if store.attrs.get("data") != files_fingerprint([qa_file]):
            problems.append("QA file")
        if problems:
            raise UserError(
                f"{store.path} was made for another {' and '.join(problems)} than this evaluation; "
                "use --force to use it anyway"
            )
    width = int(store.attrs["n_objects"])
    if n_visual is not None and width != n_visual:
        raise UserError(f"{store.path} holds maps over {width} visual tokens but this model reads {n_visual}")
    rows = {
        index: row["object_scores"] for index, row in store.group(*GROUP).iter_samples(("object_scores",))
    }
    missing = [s.id for s in samples if s.index not in rows]
    if missing:
        raise UserError(
            f"{store.path} lacks maps for {len(missing)} of the {len(samples)} questions "
            f"(first: {missing[0]!r}); "
            "finish the store or use --limit"
        )
    if not all(np.isfinite(rows[s.index]).all() for s in samples):
        raise UserError(f"{store.path} has NaN or infinite maps; recompute the store")
    return {s.index: rows[s.index] for s in samples}
