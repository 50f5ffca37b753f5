"""Pruned inference with real token removal, and the official masking protocol it replaces.

Both decoders run the layers of a Llama-style causal LM by hand (embedding, rotary table, decoder layers,
final norm, LM head), as *stages* separated by drop points ``l_1 < ... < l_n``: stage ``i`` runs layers
``[l_i, l_{i+1})`` (``l_0 = 0``, the last stage ends at ``L``) on the prompt tokens that survived the drops
so far. One drop at layer ``K`` (every single-drop method) is the list of one: ``[0, K)`` then ``[K, L)``.

* :class:`PrunedDecoder` removes the pruned tokens from the hidden states before each drop layer: later
  stages run on shorter (left-padded) sequences and cache fewer keys, while every kept token keeps its
  original RoPE position. The KV cache therefore holds different lengths per stage, and each stage carries
  its own key-validity mask (per row) that grows by one column per decoded token.
* :class:`MaskedDecoder` is the official Fast3D implementation (spec §5.1): the sequence keeps its length
  and the pruned keys are hidden from every query from their drop layer on. It gives the same outputs for
  static selections and no speed-up; it exists for the equivalence tests and the speed benchmark.

Each selection is made once at prefill (attention-scored ones from the query rows' head-mean attention,
computed for those rows only, at the layer the drop point names) and applied to every decode step and
every beam of a row. Later drops choose among the groups the earlier ones kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

import torch
from torch import Tensor, nn

from fast3d_cli.generation.decoder import DecodeState, check_left_padded, position_ids_from_mask, select_state

SUPPORTED_ATTENTION = ("sdpa", "eager", "flash_attention_2")


ATTENTION_QUERIES = ("last", "instruction")
ATTENTION_SOURCES = ("previous", "next")


@dataclass
class DropPoint:
    """One removal: the visual tokens not selected leave the sequence before layer ``layer``.

    Budget, exactly one of (all [B]): ``keep`` groups (counted over all ``n_groups``, clipped to the groups
    still present), ``alpha`` (SAP: the fewest surviving top groups whose softmax mass reaches alpha) or
    ``threshold`` (adaptive gating: the surviving groups whose score is at least ``threshold`` times the best
    surviving score). ``scores`` [B, M], or None to score from attention during prefill: the head-mean
    attention of the ``query`` rows ("last": the last prompt token; "instruction": every prompt token after
    the visual span, averaged) to the visual tokens, summed per group, taken from ``attention`` "previous"
    (the attention layer ``layer - 1`` computed, FastV) or "next" (layer ``layer``'s own query/key
    projections applied to its not yet pruned input, PyramidDrop).
    """

    layer: int
    keep: Tensor | None = None
    alpha: Tensor | None = None
    threshold: Tensor | None = None
    scores: Tensor | None = None
    query: str = "last"
    attention: str = "previous"

    def __post_init__(self) -> None:
        if sum(b is not None for b in (self.keep, self.alpha, self.threshold)) != 1:
            raise ValueError("a pruning plan needs exactly one of keep or alpha (or threshold) per drop")
        if self.query not in ATTENTION_QUERIES or self.attention not in ATTENTION_SOURCES:
            raise ValueError(
                f"query must be one of {ATTENTION_QUERIES}, attention one of {ATTENTION_SOURCES}"
            )
        if self.scores is None and self.attention == "previous" and self.layer < 1:
            raise ValueError("attention-scored pruning (fastv) needs layer >= 1")


@dataclass
class PruningPlan:
    """What to remove from one batch: one drop point (the fields below) and optionally ``later`` ones.

    ``scores`` [B, M]: one score per candidate group (an object = ``group`` consecutive visual tokens), or
    ``None`` for FastV (scores taken from layer ``K-1`` attention during prefill). Exactly one of ``keep``
    ([B] groups to keep) or ``alpha`` ([B] SAP mass threshold) is set (or ``threshold``, see
    :class:`DropPoint`). ``visual_start`` [B]: first visual token of each row in the left-padded prompt;
    ``n_groups * group`` visual tokens follow it. ``excluded`` [B, M] bool: groups ranked last whatever their
    score (and given no SAP mass), e.g. the zero-feature padding objects. ``later``: further drop points at
    increasing layers (multi-stage pruning); each selects among the groups that survived the previous one.
    """

    layer: int
    visual_start: Tensor
    n_groups: int
    group: int = 1
    scores: Tensor | None = None
    keep: Tensor | None = None
    alpha: Tensor | None = None
    excluded: Tensor | None = None
    threshold: Tensor | None = None
    query: str = "last"
    attention: str = "previous"
    later: tuple[DropPoint, ...] = ()

    def __post_init__(self) -> None:
        layers = [drop.layer for drop in self.drops]  # validates every drop point
        if any(b <= a for a, b in pairwise(layers)):
            raise ValueError(f"drop layers must increase strictly, got {layers}")

    @property
    def drops(self) -> list[DropPoint]:
        first = DropPoint(
            self.layer, self.keep, self.alpha, self.threshold, self.scores, self.query, self.attention
        )
        return [first, *self.later]

    @property
    def n_visual(self) -> int:
        return self.n_groups * self.group


@dataclass
class PrefillReport:
    """What the prefill kept: ``kept_groups`` [B] and the kept visual token indices (relative to the
    visual span, ``-1`` padded) ``kept_visual`` [B, n_visual], after the last drop; ``stages``: the
    ``kept_visual`` of every drop point in order (the last one is ``kept_visual``)."""

    kept_groups: Tensor
    kept_visual: Tensor
    stages: list[Tensor] = field(default_factory=list)


def _backbone(llm: nn.Module) -> nn.Module:
    backbone = getattr(llm, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if backbone is None or not all(hasattr(backbone, n) for n in needed) or not hasattr(llm, "lm_head"):
        raise TypeError(f"{type(llm).__name__} is not a Llama-style causal LM (model.layers, lm_head ...)")
    return backbone


def attention_mask_4d(allowed: Tensor, implementation: str, dtype: torch.dtype) -> Tensor:
    """[B, 1, Q, K] bool (True = attend) as the attention implementation wants it."""
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def layer_mask(key_valid: Tensor, query_length: int, implementation: str, dtype: torch.dtype) -> Tensor:
    """The mask one stage's layers get for ``query_length`` new tokens over ``key_valid`` [B, KV] keys.

    flash-attn takes the 2D key-padding mask (it applies causality itself, bottom-right aligned); sdpa and
    eager get [B, 1, Q, KV]: causal in sequence order (kept tokens stay in original order) and key padding.
    Padding queries attend to themselves so that their (unused) outputs stay finite.
    """
    if implementation == "flash":
        return key_valid.long()
    n_keys = key_valid.shape[1]
    keys = torch.arange(n_keys, device=key_valid.device)
    queries = keys[n_keys - query_length :]
    causal = keys[None, :] <= queries[:, None]
    itself = keys[None, :] == queries[:, None]
    allowed = (causal[None, None] & key_valid[:, None, None, :]) | itself[None, None]
    return attention_mask_4d(allowed, implementation, dtype)


@dataclass
class Stage:
    """Layers ``[start, stop)`` sharing one key-validity mask."""

    start: int
    stop: int

    @property
    def key(self) -> str:
        return f"keys_{self.start}_{self.stop}"


class _LayerRunner:
    """Runs the decoder layers of ``llm`` by hand with explicit masks and positions."""

    def __init__(self, llm: nn.Module) -> None:
        self.llm = llm
        self.backbone = _backbone(llm)
        implementation = llm.config._attn_implementation
        if implementation not in SUPPORTED_ATTENTION and not implementation.startswith("fast3d_capture"):
            raise ValueError(
                f"pruned inference needs sdpa, eager or flash_attention_2, the model uses {implementation!r}"
            )
        self.n_layers = len(self.backbone.layers)

    @property
    def implementation(self) -> str:
        impl = self.llm.config._attn_implementation
        if impl == "eager":
            return "eager"
        return "flash" if "flash" in impl else "sdpa"

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    def run(self, stage: Stage, hidden: Tensor, positions: Tensor, key_valid: Tensor, cache) -> Tensor:
        """Layers of ``stage`` on ``hidden`` (the new tokens); ``key_valid`` [B, KV] covers the cached and the
        new keys of this stage."""
        mask = layer_mask(key_valid, hidden.shape[1], self.implementation, hidden.dtype)
        rotary = self.backbone.rotary_emb(hidden, position_ids=positions)
        for layer in self.backbone.layers[stage.start : stage.stop]:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                position_embeddings=rotary,
            )
        return hidden

    def prompt(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A left-padded prompt on the model's device: (mask [B,T] long, embeddings, positions, key validity).
        Padding gets position 0; it is never attended."""
        check_left_padded(attention_mask)
        mask = attention_mask.to(self.device, torch.long)
        positions = position_ids_from_mask(mask).masked_fill(mask == 0, 0)
        return mask, inputs_embeds.to(self.device, self.dtype), positions, mask.bool()

    @staticmethod
    def state(stages: list[Stage], cache, mask: Tensor, key_valid: tuple[Tensor, ...]) -> DecodeState:
        """The decoding state after a prefill: each stage's key validity travels in ``extras``."""
        extras = {stage.key: valid for stage, valid in zip(stages, key_valid, strict=True)}
        return DecodeState(cache=cache, attention_mask=mask, next_position=mask.sum(-1), extras=extras)

    def logits(self, hidden_last: Tensor) -> Tensor:
        return self.llm.lm_head(self.backbone.norm(hidden_last)).float()

    def step(self, stages: list[Stage], token_ids: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        hidden = self.backbone.embed_tokens(token_ids.to(self.device).view(-1, 1))
        positions = state.next_position.view(-1, 1)
        extras = dict(state.extras)
        for stage in stages:
            if stage.start == stage.stop:
                continue
            valid = extras[stage.key]
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], dim=1)
            extras[stage.key] = valid
            hidden = self.run(stage, hidden, positions, valid, state.cache)
        new_state = replace(state, next_position=state.next_position + 1, extras=extras)
        return self.logits(hidden[:, -1]), new_state


def group_scores_from_attention(attention: Tensor, group: int) -> Tensor:
    """[B, n_visual] token attention -> [B, n_visual // group] summed per group (object)."""
    return attention.reshape(attention.shape[0], -1, group).sum(-1)


def stages_for(layers: Sequence[int], n_layers: int) -> list[Stage]:
    """Stage ``i`` runs layers ``[l_i, l_{i+1})`` (``l_0 = 0``, the last stage ends at ``n_layers``)."""
    bounds = [0, *layers, n_layers]
    return [Stage(a, b) for a, b in pairwise(bounds)]


def head_mean_attention(
    query: Tensor, key: Tensor, rows: Tensor, key_valid: Tensor, scaling: float, dtype: torch.dtype
) -> Tensor:
    """Head-mean softmax attention [B, R, T] of the query rows ``rows`` ([R] sequence indices; ``query``
    [B, H, R, D] holds only those rows) over ``key`` [B, Hkv, T, D]: causal, valid keys only, float32
    softmax cast to ``dtype`` before the head mean (as the eager attention, and PyramidDrop, do)."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scores = (query.float() @ key.float().transpose(-1, -2)) * scaling  # [B, H, R, T]
    keys = torch.arange(key.shape[2], device=key.device)
    allowed = (keys[None, :] <= rows[:, None])[None] & key_valid[:, None, :]  # [B, R, T]
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1).to(dtype).float().mean(1)


class _LayerProbe:
    """Records, while layer ``layer`` runs (capture attention), the head-mean attention [B, R, T] of query
    rows ``row_start..T-1``: only that layer, only those rows (no full attention matrix)."""

    def __init__(self, layer: int, row_start: int, key_valid: Tensor) -> None:
        self.layer = layer
        self.row_start = row_start
        self.key_valid = key_valid
        self.attention: Tensor | None = None

    def record(self, layer: int, query: Tensor, key: Tensor, attention_mask, scaling: float) -> None:
        if layer != self.layer:
            return
        rows = torch.arange(self.row_start, query.shape[2], device=query.device)
        self.attention = head_mean_attention(
            query[:, :, rows], key, rows, self.key_valid, scaling, torch.float32
        )


def next_layer_attention(
    layer: nn.Module, rotary: nn.Module, hidden: Tensor, positions: Tensor, key_valid: Tensor, row_start: int
) -> Tensor:
    """What ``layer``'s self-attention would give on its input ``hidden`` [B, T, H] for the query rows
    ``row_start..T-1`` (PyramidDrop's ranking): input norm, q (those rows) and k (all) projections, RoPE
    from ``positions``, causal softmax over valid keys. [B, R, T]."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    rows = torch.arange(row_start, hidden.shape[1], device=hidden.device)
    batch, head_dim = hidden.shape[0], attention.head_dim
    query = attention.q_proj(normed[:, rows]).view(batch, rows.numel(), -1, head_dim)
    key = attention.k_proj(normed).view(batch, hidden.shape[1], -1, head_dim)
    if hasattr(attention, "q_norm"):  # per-head query/key norms (Qwen3-style layers)
        query, key = attention.q_norm(query), attention.k_norm(key)
    query, key = query.transpose(1, 2), key.transpose(1, 2)
    cos, sin = rotary(hidden, position_ids=positions)
    query, _ = apply_rotary_pos_emb(query, query, cos[:, rows], sin[:, rows])
    _, key = apply_rotary_pos_emb(key, key, cos, sin)
    return head_mean_attention(query, key, rows, key_valid, attention.scaling, hidden.dtype)


def attention_group_scores(
    attention: Tensor, index: Tensor, visual_start: Tensor, n_visual: int, group: int
) -> Tensor:
    """Group scores [B, M] from the attention [B, R, T] of the last ``R`` slots of a (pruned) sequence whose
    slot ``t`` holds original prompt token ``index[b, t]`` (``-1``: padding): the mean over the query rows
    that are real tokens after the visual span (one row: that row as is), summed per group of the original
    visual tokens ``visual_start[b] + [0, n_visual)``; tokens no longer present score 0."""
    rows = index[:, index.shape[1] - attention.shape[1] :]
    is_query = (rows >= (visual_start + n_visual)[:, None]).float()
    weights = is_query / is_query.sum(1, keepdim=True).clamp(min=1)
    token = (attention * weights[:, :, None]).sum(1)  # [B, T]
    if attention.shape[1] == 1:
        token = attention[:, 0]  # the last prompt token alone: no averaging (bitwise as FastV)
    relative = index - visual_start[:, None]
    in_span = (index >= 0) & (relative >= 0) & (relative < n_visual)
    visual = token.new_zeros(token.shape[0], n_visual + 1)
    visual.scatter_(1, torch.where(in_span, relative, n_visual), torch.where(in_span, token, 0.0))
    return group_scores_from_attention(visual[:, :n_visual], group)


def select_groups(drop: DropPoint, scores: Tensor, alive: Tensor, excluded: Tensor | None = None) -> Tensor:
    """[B, M] bool: the groups kept after ``drop``, the top-scoring ones among the ``alive`` groups, as many
    as its budget says (``excluded`` groups rank below every other surviving group). The ranking of
    :func:`fast3d_kernels.select_gather`: float32, ties to the lower index, official SAP counts."""
    from fast3d_kernels.reference import order_key, sap_counts

    device = alive.device
    scores = scores.to(device).float()
    if excluded is not None:
        scores = scores.masked_fill(excluded.to(device), float("-inf"))
    scores = scores.masked_fill(~alive, float("nan"))  # below every surviving group, also excluded ones
    if drop.keep is not None:
        counts = drop.keep.to(device).long().clamp(min=0)
    elif drop.alpha is not None:
        counts = sap_counts(scores, drop.alpha.to(device).float())
    else:
        finite = scores.nan_to_num(nan=float("-inf"))
        best = finite.max(1, keepdim=True).values
        counts = (finite >= drop.threshold.to(device).float()[:, None] * best).sum(1)
    counts = torch.minimum(counts, alive.sum(1))
    order = torch.sort(order_key(scores), dim=1, descending=True, stable=True).indices
    ranks = torch.arange(order.shape[1], device=device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    return rank < counts[:, None]


@dataclass
class _Sequence:
    """The prompt as one stage sees it: hidden states, RoPE positions, key validity and, per slot, the
    index of the original prompt token it holds (``-1``: padding)."""

    hidden: Tensor
    positions: Tensor
    valid: Tensor
    index: Tensor


class PrunedDecoder:
    """:class:`~fast3d_cli.generation.Decoder` that physically removes the pruned visual tokens at each drop
    point of its plan (one drop at layer K, or several: multi-stage pruning)."""

    def __init__(self, llm: nn.Module, plan: PruningPlan) -> None:
        self.runner = _LayerRunner(llm)
        for drop in plan.drops:
            if not 0 <= drop.layer < self.runner.n_layers:
                raise ValueError(f"pruning layer {drop.layer} outside [0, {self.runner.n_layers})")
        self.plan = plan
        self.stages = stages_for([drop.layer for drop in plan.drops], self.runner.n_layers)
        self.report: PrefillReport | None = None

    @torch.no_grad()
    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, DecodeState]:
        from transformers import DynamicCache

        runner, plan = self.runner, self.plan
        mask, hidden, positions, full_valid = runner.prompt(inputs_embeds, attention_mask)
        index = torch.arange(mask.shape[1], device=runner.device).expand_as(mask).masked_fill(~full_valid, -1)
        seq = _Sequence(hidden, positions, full_valid, index)
        visual_start = plan.visual_start.to(runner.device)
        alive = torch.ones(mask.shape[0], plan.n_groups, dtype=torch.bool, device=runner.device)
        cache = DynamicCache(config=runner.llm.config)
        valids, stages_kept = [], []
        for drop, stage in zip(plan.drops, self.stages, strict=False):
            seq, attention = self._run_stage(stage, drop, seq, visual_start, cache)
            valids.append(seq.valid)
            scores = (
                drop.scores
                if drop.scores is not None
                else self._attention_scores(attention, seq, visual_start)
            )
            alive = self._select(drop, scores, alive)
            seq = self._remove(seq, alive, visual_start)
            stages_kept.append(self._kept_visual(seq.index, visual_start))
        hidden = runner.run(self.stages[-1], seq.hidden, seq.positions, seq.valid, cache)
        valids.append(seq.valid)
        self.report = PrefillReport(alive.sum(1).cpu(), stages_kept[-1], stages_kept)
        state = runner.state(self.stages, cache, mask, tuple(valids))
        return runner.logits(hidden[:, -1]), state

    def _run_stage(
        self, stage: Stage, drop: DropPoint, seq: _Sequence, visual_start: Tensor, cache
    ) -> tuple[_Sequence, Tensor | None]:
        """The layers before ``drop`` on the current sequence; with attention scoring also the attention
        of the drop's query rows (captured from layer ``drop.layer - 1``, or probed with ``drop.layer``)."""
        runner = self.runner
        if drop.scores is not None:
            hidden = runner.run(stage, seq.hidden, seq.positions, seq.valid, cache)
            return replace(seq, hidden=hidden), None
        row_start = self._query_start(drop, seq.index, visual_start)
        if drop.attention == "next":
            hidden = runner.run(stage, seq.hidden, seq.positions, seq.valid, cache)
            layer = runner.backbone.layers[drop.layer]
            attention = next_layer_attention(
                layer, runner.backbone.rotary_emb, hidden, seq.positions, seq.valid, row_start
            )
            return replace(seq, hidden=hidden), attention
        from fast3d_cli.attention.capture import capturing

        probe = _LayerProbe(drop.layer - 1, row_start, seq.valid)
        with capturing(runner.llm, probe):  # type: ignore[arg-type]
            hidden = runner.run(stage, seq.hidden, seq.positions, seq.valid, cache)
        return replace(seq, hidden=hidden), probe.attention

    def _query_start(self, drop: DropPoint, index: Tensor, visual_start: Tensor) -> int:
        """First query row to score with: the last one, or the first slot after the visual span in any row."""
        if drop.query == "last":
            return index.shape[1] - 1
        after = index >= (visual_start + self.plan.n_visual)[:, None]
        first = torch.where(after.any(1), after.float().argmax(1), index.shape[1] - 1)
        return int(first.min())

    def _attention_scores(self, attention: Tensor, seq: _Sequence, visual_start: Tensor) -> Tensor:
        plan = self.plan
        return attention_group_scores(attention, seq.index, visual_start, plan.n_visual, plan.group)

    def _select(self, drop: DropPoint, scores: Tensor, alive: Tensor) -> Tensor:
        return select_groups(drop, scores, alive, self.plan.excluded)

    def _remove(self, seq: _Sequence, kept_groups: Tensor, visual_start: Tensor) -> _Sequence:
        """The sequence without the visual tokens of unselected groups, right-aligned (left padding), kept
        tokens in order with their positions; gathered by :func:`fast3d_kernels.select_gather`."""
        from fast3d_kernels import select_gather

        n = self.plan.n_visual
        relative = seq.index - visual_start[:, None]
        in_span = (relative >= 0) & (relative < n)
        group_kept = kept_groups.gather(1, (relative.clamp(0, n - 1) // self.plan.group))
        keep = seq.valid & (~in_span | group_kept)
        gathered = select_gather(seq.hidden, seq.positions, keep.float(), k=keep.sum(1), group=1)
        length = int(gathered.lengths.max())  # the host synchronisation: the new sequence length
        width = gathered.values.shape[1]
        source = gathered.index[:, width - length :]
        live = source >= 0
        return _Sequence(
            hidden=gathered.values[:, width - length :],
            positions=gathered.positions[:, width - length :],
            valid=live,
            index=torch.where(live, seq.index.gather(1, source.clamp(min=0)), -1),
        )

    def _kept_visual(self, index: Tensor, visual_start: Tensor) -> Tensor:
        """[B, n_visual] kept visual token indices (relative to the span), ascending, ``-1`` padded."""
        n = self.plan.n_visual
        relative = index - visual_start[:, None]
        is_visual = (index >= 0) & (relative >= 0) & (relative < n)
        padded = torch.nn.functional.pad(
            torch.where(is_visual, relative, n), (0, max(0, n - index.shape[1])), value=n
        )
        order = padded.sort(dim=1).values[:, :n]
        return order.masked_fill(order == n, -1).cpu()

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        return self.runner.step(self.stages, token_ids, state)

    def select(self, state: DecodeState, row_index: Tensor) -> DecodeState:
        return select_state(state, row_index)


class MaskedDecoder:
    """The official protocol (spec §5.1) for static keep sets: nothing is removed; from each drop layer on
    the keys of the visual tokens pruned so far are masked for every query, in prefill and in every decode
    step. ``layer`` and ``keep_visual`` ([B, n_visual] bool) describe one drop; several drops give a list
    of increasing layers and one (nested) keep mask per layer."""

    def __init__(
        self,
        llm: nn.Module,
        layer: int | Sequence[int],
        visual_start: Tensor,
        keep_visual: Tensor | Sequence[Tensor],
    ) -> None:
        self.runner = _LayerRunner(llm)
        self.layers = [layer] if isinstance(layer, int) else list(layer)
        self.keep_visual = [keep_visual] if isinstance(keep_visual, Tensor) else list(keep_visual)
        if len(self.keep_visual) != len(self.layers):
            raise ValueError("one keep mask per drop layer")
        self.visual_start = visual_start
        self.stages = stages_for(self.layers, self.runner.n_layers)

    @torch.no_grad()
    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, DecodeState]:
        from transformers import DynamicCache

        runner = self.runner
        mask, hidden, positions, full_valid = runner.prompt(inputs_embeds, attention_mask)
        valids = [full_valid]
        for keep in self.keep_visual:
            columns = self.visual_start.to(runner.device)[:, None] + torch.arange(
                keep.shape[1], device=runner.device
            )
            valids.append(
                full_valid.scatter(1, columns, full_valid.gather(1, columns) & keep.to(runner.device))
            )
        cache = DynamicCache(config=runner.llm.config)
        for stage, valid in zip(self.stages, valids, strict=True):
            hidden = runner.run(stage, hidden, positions, valid, cache)
        state = runner.state(self.stages, cache, mask, tuple(valids))
        return runner.logits(hidden[:, -1]), state

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        return self.runner.step(self.stages, token_ids, state)

    def select(self, state: DecodeState, row_index: Tensor) -> DecodeState:
        return select_state(state, row_index)
