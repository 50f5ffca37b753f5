"""Image/video question answering data for the ``llava`` model family (docs/llava.md).

A QA file is JSON Lines, one question per line::

    {"id": "q1", "image": "images/cat.png", "question": "What animal is this?", "answers": ["cat"]}
    {"id": "q2", "video": ["clip/0.png", "clip/1.png"], "question": "What moves?", "answers": ["a car"]}

* ``id``: a string or integer, unique in the file;
* ``image`` (one picture) or ``video`` (its frames, in order): paths relative to the QA file's folder, that
  stay inside it; ``.png``/``.jpg``/``.jpeg``/``.bmp``/``.webp`` (read with Pillow, as RGB) or ``.npy``
  (an ``H x W x 3`` array, uint8 0-255 or float 0-1, read without pickle);
* ``question``: the text the model is asked (the family's prompt template puts it after the image);
* ``answers``: the reference answers (a non-empty list of strings; ``"answer": "..."`` is also read).

Blank lines are skipped. Any malformed line is a :class:`~fast3d_cli.errors.DataFileError` naming the file
and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fast3d_cli.errors import DataFileError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ARRAY_SUFFIX = ".npy"


@dataclass(frozen=True)
class ImageQASample:
    """One question. ``frames``: one path for an image, several for a video; ``index``: line order."""

    index: int
    id: str
    question: str
    answers: tuple[str, ...]
    frames: tuple[Path, ...]
    is_video: bool


def load_image_qa(path: Path | str, limit: int | None = None) -> list[ImageQASample]:
    """The questions of a QA file (the first ``limit`` ones)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataFileError(f"QA file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"cannot read QA file {path}: {err}") from None
    samples: list[ImageQASample] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        sample = _parse_line(line, len(samples), path, number)
        if sample.id in seen:
            raise DataFileError(f"{path}:{number}: duplicate id {sample.id!r}")
        seen.add(sample.id)
        samples.append(sample)
        if limit is not None and len(samples) == limit:
            break
    if not samples:
        raise DataFileError(f"{path} holds no questions")
    return samples


def _parse_line(line: str, index: int, path: Path, number: int) -> ImageQASample:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except ValueError as err:
        raise DataFileError(f"{where}: not JSON ({err})") from None
    if not isinstance(record, dict):
        raise DataFileError(f"{where}: each line must be a JSON object")
    sample_id = record.get("id")
    if not isinstance(sample_id, str | int) or isinstance(sample_id, bool):
        raise DataFileError(f"{where}: 'id' must be a string or an integer")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataFileError(f"{where}: 'question' must be a non-empty string")
    answers = record.get("answers", [record["answer"]] if "answer" in record else None)
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataFileError(f"{where}: 'answers' must be a non-empty list of strings")
    if ("image" in record) == ("video" in record):
        raise DataFileError(f"{where}: give exactly one of 'image' (a path) or 'video' (a list of paths)")
    is_video = "video" in record
    names = record["video"] if is_video else [record["image"]]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise DataFileError(f"{where}: 'video' must be a non-empty list of frame paths, 'image' one path")
    frames = tuple(_inside(path.parent, name, where) for name in names)
    return ImageQASample(index, str(sample_id), question, tuple(answers), frames, is_video)


def _inside(root: Path, name: str, where: str) -> Path:
    """``root / name``; refused when it leaves ``root`` (absolute, ``..``) or has an unknown suffix."""
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise DataFileError(f"{where}: {name!r} is outside the QA file's folder")
    if candidate.suffix.lower() not in (*PICTURE_SUFFIXES, ARRAY_SUFFIX):
        known = ", ".join((*PICTURE_SUFFIXES, ARRAY_SUFFIX))
        raise DataFileError(f"{where}: {name!r} is not a picture or array file ({known})")
    return candidate


def read_frame(path: Path) -> np.ndarray:
    """One picture as an ``H x W x 3`` uint8 array."""
    if path.suffix.lower() == ARRAY_SUFFIX:
        return _read_array(path)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow is a dependency of transformers' image processors
        raise DataFileError(
            f"reading {path} needs Pillow (pip install pillow), or give .npy arrays"
        ) from None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataFileError(f"image not found: {path}") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise DataFileError(f"cannot read image {path}: {err}") from None


def _read_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(f"image not found: {path}") from None
    except (OSError, ValueError) as err:
        raise DataFileError(f"cannot read image array {path}: {err}") from None
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise DataFileError(f"{path}: an image array must be H x W x 3, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind != "f" or not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise DataFileError(f"{path}: an image array must be uint8 or finite floats in [0, 1]")
    return np.round(array * 255).astype(np.uint8)


def read_frames(sample: ImageQASample) -> list[np.ndarray]:
    return [read_frame(frame) for frame in sample.frames]
