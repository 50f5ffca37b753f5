"""Attention-supervision losses of the sample-model recipe.

Each term is a negative log of an attention mass, read from the recorder:

* ``binding`` (one head of layer 0): every object-feature token attends to its own identifier token;
* ``gather`` (one head of layer 1): the answer rows attend to each of the prompt's keywords (the words that
  name the evidence objects);
* ``grounding`` (one head of a later layer): the answer rows attend to the evidence objects' tokens;
* ``answer_grounding`` (every head of the layers after the gather): the rows after the first answer token
  cover every evidence object (each gets its share of their mean attention);
* ``focus`` (every head of every layer, every text row): keep attention off the visual tokens that are not
  evidence: -log(1 - mass on them). This is what makes Fast3D's map (spec §3: all layers, heads and text rows)
  point at the evidence instead of spreading over 100 objects.

The targets come from the world's ``evidence`` annotations, so the concentration of the trained model's
attention is taught, not emergent; the README says so.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fast3d_cli.sample_model.attention import AttentionRecorder
from fast3d_cli.sample_model.batches import MAX_OBJECTS, Supervision
from fast3d_cli.sample_model.recipe import HeadRoles, LossWeights

EPS = 1e-6


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


def gather_loss(recorder: AttentionRecorder, layer: int, head: int, sup: Supervision) -> Tensor:
    """The gather head at every answer row attends to every keyword token (-log of each token's attention,
    averaged): it must bring the colour *and* the class of a description to the answer, not just one."""
    probs = recorder.text[layer % len(recorder.text)][:, head]  # [B, R, T]
    pairs = sup.answer_rows[:, :, None] & sup.keywords[:, None, :]
    return _masked_mean(-(probs + EPS).log(), pairs)


def answer_grounding_loss(stacked: Tensor, sup: Supervision, first_layer: int) -> Tensor:
    """Coverage of every evidence object by the attention of the answer: per sample and evidence object, the
    mass on that object's tokens averaged over every head of the layers from ``first_layer`` on (earlier
    layers cannot know the evidence yet: the keywords are gathered in between) and over the rows after the
    first answer token; the loss is -log of it, averaged over the objects. Each evidence object must get
    its share (a caption's neighbour, every counted object), not just the union."""
    after_first = sup.answer_rows & ~_first_answer_row(sup) & sup.has_evidence[:, None]  # [B, R]
    rows = after_first.to(stacked.dtype)
    per_row = stacked[first_layer:].mean(dim=(0, 2))  # [B, R, T]: mean over layers and heads
    mean_attention = (per_row * rows[:, :, None]).sum(1) / rows.sum(1, keepdim=True).clamp(min=1)  # [B, T]
    slots = sup.slot_of_key.clamp(min=0)
    on_evidence = mean_attention * sup.evidence
    per_object = torch.zeros(len(slots), MAX_OBJECTS, dtype=stacked.dtype).scatter_add_(1, slots, on_evidence)
    evidence_objects = torch.zeros_like(per_object, dtype=torch.bool).scatter_(
        1, slots, sup.evidence & (sup.slot_of_key >= 0)
    )
    evidence_objects &= after_first.any(1, keepdim=True)
    return _masked_mean(-(per_object + EPS).log(), evidence_objects)


def focus_loss(stacked: Tensor, sup: Supervision) -> Tensor:
    """Sum over layers of the mean over heads and text rows of -log(1 - mass on the non-evidence visual
    tokens)."""
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


def answer_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token loss of the answers, averaged per sample first: a long caption weighs no more than a
    one-word answer."""
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none"
    )
    mask = (targets >= 0).to(nll.dtype)
    return ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


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
        losses["gather"] = weights.gather * gather_loss(recorder, *roles.gather, sup)
    if weights.grounding:
        rows = sup.answer_rows & sup.has_evidence[:, None]
        losses["grounding"] = weights.grounding * head_rows_loss(
            recorder, *roles.grounding, sup.evidence, rows
        )
    if weights.answer_grounding or weights.focus:
        stacked = recorder.stacked()
        if weights.answer_grounding:
            grounded = answer_grounding_loss(stacked, sup, roles.first_grounded_layer)
            losses["answer_grounding"] = weights.answer_grounding * grounded
        if weights.focus:
            losses["focus"] = weights.focus * focus_loss(stacked, sup)
    return losses
