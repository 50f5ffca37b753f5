"""Attention-supervision losses of the sample-model recipe.

Each term is a negative log of an attention mass, read from the recorder:

* ``binding`` (one head of layer 0): every object-feature token attends to its own identifier token;
* ``gather`` (one head of layer 1): the answer rows attend to the prompt's keywords (the words that name the
  evidence objects);
* ``grounding`` (one head of the last layer): the answer rows attend to the evidence objects' tokens;
* ``answer_grounding`` (every head of the layers after the gather): the rows after the first answer token
  attend to the evidence objects' tokens;
* ``focus`` (every head of every layer, every text row): keep attention off the visual tokens that are not
  evidence: -log(1 - mass on them). This is what makes Fast3D's map (spec §3: all layers, heads and text rows)
  point at the evidence instead of spreading over 100 objects.

The targets come from the world's ``evidence`` annotations, so the concentration of the trained model's
attention is taught, not emergent; the README says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fast3d_cli.sample_model.attention import AttentionRecorder
from fast3d_cli.sample_model.batches import Supervision

EPS = 1e-6


@dataclass(frozen=True)
class HeadRoles:
    """(layer, head) of the three scaffolded heads; ``-1`` as a layer means the last one."""

    binding: tuple[int, int] = (0, 0)
    gather: tuple[int, int] = (1, 1)
    grounding: tuple[int, int] = (-1, 0)
    first_grounded_layer: int = 2  # answer_grounding supervises the layers from here on (after the gather)


@dataclass(frozen=True)
class LossWeights:
    binding: float = 1.0
    gather: float = 1.0
    grounding: float = 1.0
    answer_grounding: float = 0.0
    focus: float = 0.0
    readout: float = 0.0


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1).to(values.dtype)


def _mass(probs: Tensor, keys: Tensor) -> Tensor:
    """Attention mass on the key set ``keys`` [B, T]: probs [B, ..., T] -> [B, ...] (one batched matmul)."""
    flat = probs.reshape(probs.shape[0], -1, probs.shape[-1])
    mass = torch.bmm(flat, keys.to(probs.dtype)[:, :, None])
    return mass.reshape(probs.shape[:-1])


def binding_loss(recorder: AttentionRecorder, sup: Supervision) -> Tensor:
    own = recorder.binding.gather(2, sup.own_id[:, :, None]).squeeze(2)  # [B, F]
    return _masked_mean(-(own + EPS).log(), sup.feature_valid)


def head_rows_loss(recorder: AttentionRecorder, layer: int, head: int, keys: Tensor, rows: Tensor) -> Tensor:
    """-log(mass of one head on ``keys``), averaged over the rows ``rows`` [B, R]."""
    probs = recorder.text[layer % len(recorder.text)][:, head]  # [B, R, T]
    return _masked_mean(-(_mass(probs, keys) + EPS).log(), rows)


def answer_grounding_loss(stacked: Tensor, sup: Supervision, first_layer: int) -> Tensor:
    """Every head of the layers from ``first_layer`` on, at the rows after the first answer token: mass on
    the evidence. (Earlier layers cannot know the evidence yet: the keywords are gathered in between.)"""
    after_first = sup.answer_rows & ~_first_answer_row(sup)
    rows = after_first & sup.has_evidence[:, None]
    mass = _mass(stacked[first_layer:].transpose(0, 1), sup.evidence)  # [B, L', H, R]
    return _masked_mean(-(mass + EPS).log(), rows[:, None, None, :].expand_as(mass))


def focus_loss(stacked: Tensor, sup: Supervision) -> Tensor:
    """Sum over layers of the mean over heads and text rows of -log(1 - mass on non-evidence visual tokens)."""
    distractors = sup.visual & ~sup.evidence
    mass = _mass(stacked.transpose(0, 1), distractors)  # [B, L, H, R]
    penalty = -(1 - mass + 1e-4).clamp(min=1e-4).log()
    rows = sup.text_rows[:, None, None, :].expand_as(penalty)
    per_layer = [_masked_mean(penalty[:, i], rows[:, i]) for i in range(penalty.shape[1])]
    return torch.stack(per_layer).sum()


def _first_answer_row(sup: Supervision) -> Tensor:
    """The row that predicts the first answer token (its input is the last prompt token)."""
    first = sup.answer_rows.int().argmax(1)
    return torch.nn.functional.one_hot(first, sup.answer_rows.shape[1]).bool() & sup.answer_rows


def readout_loss(hidden: Tensor, llm: torch.nn.Module, sup: Supervision) -> Tensor:
    """Object-language alignment: each object's 3D and 2D tokens, in the residual stream that enters the
    grounding head's layer, predict its class word and its colour word through the model's own final norm
    and tied unembedding. Object tokens then look like the words that name them, which is what the grounding
    head's content match (keywords gathered into the answer row vs. the objects) needs."""
    picked = hidden.gather(1, sup.readout_rows[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, K, H]
    log_probs = llm.lm_head(llm.model.norm(picked)).float().log_softmax(-1)
    valid = sup.readout_targets >= 0
    nll = -log_probs.gather(2, sup.readout_targets.clamp(min=0))  # [B, K, 2]
    return _masked_mean(nll, valid)


def attention_losses(
    recorder: AttentionRecorder, sup: Supervision, weights: LossWeights, roles: HeadRoles
) -> dict[str, Tensor]:
    """The weighted loss terms that are switched on (weight > 0)."""
    losses: dict[str, Tensor] = {}
    if weights.binding:
        losses["binding"] = weights.binding * binding_loss(recorder, sup)
    if weights.gather:
        rows = sup.answer_rows & sup.has_keywords[:, None]
        losses["gather"] = weights.gather * head_rows_loss(recorder, *roles.gather, sup.keywords, rows)
    if weights.grounding:
        rows = sup.answer_rows & sup.has_evidence[:, None]
        losses["grounding"] = weights.grounding * head_rows_loss(recorder, *roles.grounding, sup.evidence, rows)
    if weights.answer_grounding or weights.focus:
        stacked = recorder.stacked()
        if weights.answer_grounding:
            grounded = answer_grounding_loss(stacked, sup, roles.first_grounded_layer)
            losses["answer_grounding"] = weights.answer_grounding * grounded
        if weights.focus:
            losses["focus"] = weights.focus * focus_loss(stacked, sup)
    return losses
