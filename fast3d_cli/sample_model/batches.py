"""Training batches for the sample model: streamed rows laid out as Chat-Scene inputs, plus the token
positions the attention losses need (each object's tokens, the evidence objects, the prompt's keywords).

Every sequence is Chat-Scene's layout (slot j = proposal j with identifier <OBJj>, zero features after the
last proposal, 100 slots) with every token at its Chat-Scene position. To save compute, a batch may leave out
some of the zero-feature padding slots: the remaining tokens keep their positions (as they do when fast3d
prunes), so a sequence with every padding slot is exactly what evaluation feeds the model. Real objects are
never left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fast3d_cli.sample_world.stream import SceneStream, StreamedScene
from fast3d_cli.sample_world.vocabulary import CLASSES, COLOURS

MAX_OBJECTS = 100
ALL_PADDING = -1


@dataclass
class TrainItem:
    """One training sequence before embedding."""

    task: str
    prompt: str
    answer: str
    feats_3d: np.ndarray  # [n_real, D3]
    feats_2d: np.ndarray  # [n_real, D2]
    slots: np.ndarray  # sorted slots in the sequence: every real one, then the kept padding slots
    evidence: list[int]  # slots the answer depends on
    keywords: list[str]  # prompt words that name the evidence
    object_words: list[tuple[str, str]]  # (class, colour) of each real slot, for the readout loss

    @property
    def n_real(self) -> int:
        return self.feats_3d.shape[0]


def layout_item(
    streamed: StreamedScene, task: str, row: dict[str, Any], rng: np.random.Generator, padding: int
) -> TrainItem:
    """One streamed row with every real slot and ``padding`` random padding slots (``ALL_PADDING``: all)."""
    n_real = streamed.n_proposals
    free = np.arange(n_real, MAX_OBJECTS)
    if padding != ALL_PADDING:
        free = np.sort(rng.choice(free, size=min(padding, len(free)), replace=False))
    return TrainItem(
        task=task,
        prompt=row["prompt"],
        answer=row["caption"],
        feats_3d=streamed.feats_3d,
        feats_2d=streamed.feats_2d,
        slots=np.concatenate([np.arange(n_real), free]),
        evidence=list(row.get("evidence", [])),
        keywords=list(row.get("keywords", [])),
        object_words=[(CLASSES[p.cls].name, COLOURS[p.colour]) for p in streamed.scene.proposals],
    )


def sample_items(
    stream: SceneStream, rng: np.random.Generator, batch_size: int, n_scenes: int, max_padding: int,
    task_weights: dict[str, float],
) -> list[TrainItem]:  # fmt: skip
    """``batch_size`` rows from ``n_scenes`` fresh scenes, each row's task drawn by ``task_weights`` among the
    tasks the scene has rows for; each keeps a random number of padding slots up to ``max_padding``."""
    scenes: list[StreamedScene] = []
    while len(scenes) < n_scenes:
        drawn = stream.draw(rng, f"batch_scene{len(scenes)}")
        if drawn is not None:
            scenes.append(drawn)
    items = []
    for k in range(batch_size):
        scene = scenes[k % n_scenes]
        tasks = [t for t in task_weights if scene.rows.get(t)]
        weights = np.array([task_weights[t] for t in tasks])
        task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
        row = scene.rows[task][int(rng.integers(len(scene.rows[task])))]
        padding = max_padding if max_padding == ALL_PADDING else int(rng.integers(0, max_padding + 1))
        items.append(layout_item(scene, task, row, rng, padding))
    return items


@dataclass
class Supervision:
    """Index tensors over a built batch of length T (left-padded) for the attention losses.

    ``rows`` [B, R]: the recorded query positions (the last R of every sequence: user text and answer);
    ``text_rows`` / ``answer_rows`` [B, R]: which of them are text / predict an answer token; ``visual``,
    ``evidence``, ``keywords`` [B, T]: key positions of the visual tokens, of the evidence objects' tokens
    and of the prompt's keywords; ``slot_of_key`` [B, T]: the object slot of each visual token (-1 elsewhere);
    ``feature_rows``, ``own_id``, ``feature_valid`` [B, F]: every object's 3D and 2D token, the position of
    its identifier token, and whether the pair is real (binding).
    """

    rows: torch.Tensor
    text_rows: torch.Tensor
    answer_rows: torch.Tensor
    visual: torch.Tensor
    evidence: torch.Tensor
    keywords: torch.Tensor
    slot_of_key: torch.Tensor
    feature_rows: torch.Tensor
    own_id: torch.Tensor
    feature_valid: torch.Tensor
    readout_rows: torch.Tensor  # [B, K] 3D and 2D tokens of the real objects
    readout_targets: torch.Tensor  # [B, K, 3] (class word, colour word, identifier) token ids; -100: none

    @property
    def has_evidence(self) -> torch.Tensor:
        return self.evidence.any(1)

    @property
    def has_keywords(self) -> torch.Tensor:
        return self.keywords.any(1)


def _full_features(items: Sequence[TrainItem]) -> tuple[torch.Tensor, torch.Tensor]:
    dims = items[0].feats_3d.shape[1], items[0].feats_2d.shape[1]
    f3d = torch.zeros(len(items), MAX_OBJECTS, dims[0])
    f2d = torch.zeros(len(items), MAX_OBJECTS, dims[1])
    for b, item in enumerate(items):
        f3d[b, : item.n_real] = torch.from_numpy(item.feats_3d)
        f2d[b, : item.n_real] = torch.from_numpy(item.feats_2d)
    return f3d, f2d


def _keyword_positions(layout: Any, item: TrainItem, text_start: int, length: int) -> list[int]:
    bare_space = set(layout.encode(" "))  # "<OBJ001>" encodes as a lone "▁" + the identifier
    wanted = {t for word in item.keywords for t in layout.encode(f" {word}")} - bare_space
    return [text_start + k for k, token in enumerate(layout.user_ids(item.prompt)) if token in wanted]


def _kept_tokens(inputs: Any, items: Sequence[TrainItem]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] bool of the tokens each sequence keeps, and [B, T] slot of each visual token (-1 elsewhere)."""
    batch, length = inputs.attention_mask.shape
    slot_of = torch.full((batch, length), -1, dtype=torch.long)
    keep = inputs.attention_mask.bool().clone()
    for b, item in enumerate(items):
        start = int(inputs.visual_start[b])
        slot_of[b, start : start + 3 * MAX_OBJECTS] = torch.arange(MAX_OBJECTS).repeat_interleave(3)
        kept_slots = torch.zeros(MAX_OBJECTS, dtype=torch.bool)
        kept_slots[torch.from_numpy(item.slots)] = True
        keep[b, start : start + 3 * MAX_OBJECTS] = kept_slots.repeat_interleave(3)
    return keep, slot_of


def _compaction_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather index [B, T'] of the kept tokens, left-padded, and the validity mask [B, T']."""
    lengths = keep.sum(1)
    new_length = int(lengths.max())
    index = torch.zeros(keep.shape[0], new_length, dtype=torch.long)
    valid = torch.arange(new_length)[None, :] >= (new_length - lengths)[:, None]
    for b in range(keep.shape[0]):
        index[b, new_length - int(lengths[b]) :] = keep[b].nonzero().squeeze(1)
    return index, valid


def build_batch(model: Any, items: Sequence[TrainItem]) -> tuple[Any, Supervision]:
    """Embed ``items`` in Chat-Scene's layout, drop the padding slots each leaves out (positions kept) and
    locate what the attention losses supervise."""
    from fast3d_cli.models.chat_scene.modeling import ModelInputs

    f3d, f2d = _full_features(items)
    full = model.build_inputs([i.prompt for i in items], f3d, f2d, answers=[i.answer for i in items])
    keep, slot_of = _kept_tokens(full, items)
    index, valid = _compaction_index(keep)
    batch, length = index.shape

    def take(x: torch.Tensor, fill: int | bool) -> torch.Tensor:
        return x.gather(1, index).masked_fill(~valid, fill)

    evidence_full = torch.zeros_like(keep)
    keywords_full = torch.zeros_like(keep)
    for b, item in enumerate(items):
        for slot in item.evidence:
            evidence_full[b] |= slot_of[b] == slot
        for pos in _keyword_positions(model.layout, item, int(full.text_start[b]), keep.shape[1]):
            keywords_full[b, pos] = True
    shift = keep.shape[1] - length  # the text is the tail of every sequence, before and after compaction
    inputs = ModelInputs(
        inputs_embeds=full.inputs_embeds.gather(
            1, index[..., None].expand(-1, -1, full.inputs_embeds.shape[-1])
        )
        * valid[..., None],
        attention_mask=valid.long(),
        position_ids=take(full.position_ids, 0),
        visual_start=full.visual_start,  # positions in the uncompacted sequence (unused after compaction)
        text_start=full.text_start - shift,
        answer_start=full.answer_start - shift,
        labels=take(full.labels, -100),
    )
    slot_of_key = take(slot_of, -1)
    first_text = int(inputs.text_start.min())
    rows = torch.arange(first_text, length).expand(batch, -1)
    feature_rows, own_id, feature_valid = _binding_pairs(slot_of_key)
    readout_rows, readout_targets = _readout(model.layout, items, slot_of_key)
    return inputs, Supervision(
        rows=rows,
        text_rows=rows >= inputs.text_start[:, None],
        answer_rows=(rows >= inputs.answer_start[:, None] - 1) & (rows <= length - 2),
        visual=slot_of_key >= 0,
        evidence=take(evidence_full, False),
        keywords=take(keywords_full, False),
        slot_of_key=slot_of_key,
        feature_rows=feature_rows,
        own_id=own_id,
        feature_valid=feature_valid,
        readout_rows=readout_rows,
        readout_targets=readout_targets,
    )


def _readout_ids(layout: Any, item: TrainItem) -> torch.Tensor:
    """[n_real, 3]: first token of each real object's class word and colour word, and its identifier."""
    words = [[layout.encode(f" {w}")[0] for w in pair] for pair in item.object_words]
    identifiers = layout.tokenizer.convert_tokens_to_ids([f"<OBJ{j:03}>" for j in range(item.n_real)])
    return torch.tensor([[*w, i] for w, i in zip(words, identifiers, strict=True)], dtype=torch.long)


def _readout(
    layout: Any, items: Sequence[TrainItem], slot_of_key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of every real object's 3D and 2D tokens and the word ids each predicts."""
    width = 2 * max(i.n_real for i in items)
    rows = torch.zeros(len(items), width, dtype=torch.long)
    targets = torch.full((len(items), width, 3), -100, dtype=torch.long)
    for b, item in enumerate(items):
        n = item.n_real  # real slots come first among the kept ones
        positions = (slot_of_key[b] >= 0).nonzero().squeeze(1).reshape(-1, 3)[:n]
        rows[b, : 2 * n] = positions[:, 1:].reshape(-1)
        targets[b, : 2 * n] = _readout_ids(layout, item).repeat_interleave(2, dim=0)
    return rows, targets


def _binding_pairs(slot_of_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sequence: the positions of every kept object's 3D and 2D tokens and of its identifier token."""
    visual = slot_of_key >= 0
    counts = visual.sum(1) // 3
    width = int(counts.max()) * 2
    rows = torch.zeros(len(slot_of_key), width, dtype=torch.long)
    ids = torch.zeros_like(rows)
    valid = torch.zeros_like(rows, dtype=torch.bool)
    for b in range(len(slot_of_key)):
        positions = visual[b].nonzero().squeeze(1).reshape(-1, 3)  # (identifier, 3D, 2D) per kept slot
        n = 2 * len(positions)
        rows[b, :n] = positions[:, 1:].reshape(-1)
        ids[b, :n] = positions[:, :1].expand(-1, 2).reshape(-1)
        valid[b, :n] = True
    return rows, ids, valid
