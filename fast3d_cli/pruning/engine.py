"""Pruned inference with real token removal, and the official masking protocol it replaces.

Both decoders run the layers of a Llama-style causal LM by hand (embedding, rotary table, decoder layers,
final norm, LM head), as two *stages*: layers ``[0, K)`` see the whole prompt, layers ``[K, L)`` see the
prompt without the pruned visual tokens.

* :class:`PrunedDecoder` removes the pruned tokens from the hidden states before layer ``K``: layers
  ``>= K`` run on a shorter (left-padded) sequence and cache fewer keys, while every kept token keeps its
  original RoPE position. The KV cache therefore holds different lengths per stage, and each stage carries
  its own key-validity mask (per row) that grows by one column per decoded token.
* :class:`MaskedDecoder` is the official Fast3D implementation (spec §5.1): the sequence keeps its length
  and the pruned keys are hidden from every query at layers ``>= K``. It gives the same outputs for a
  static selection and no speed-up; it exists for the equivalence tests and the speed benchmark.

The selection is made once at prefill (``fastv`` included, from the last prompt token's head-mean attention
at layer ``K-1``) and applied to every decode step and every beam of a row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fast3d_cli.generation.decoder import DecodeState, check_left_padded, position_ids_from_mask, select_state

SUPPORTED_ATTENTION = ("sdpa", "eager", "flash_attention_2")


@dataclass
class PruningPlan:
    """What to remove from one batch.

    ``scores`` [B, M]: one score per candidate group (an object = ``group`` consecutive visual tokens), or
    ``None`` for FastV (scores taken from layer ``K-1`` attention during prefill). Exactly one of ``keep``
    ([B] groups to keep) or ``alpha`` ([B] SAP mass threshold) is set. ``visual_start`` [B]: first visual
    token of each row in the left-padded prompt; ``n_groups * group`` visual tokens follow it.
    ``excluded`` [B, M] bool: groups ranked last whatever their score (and given no SAP mass), e.g. the
    zero-feature padding objects.
    """

    layer: int
    visual_start: Tensor
    n_groups: int
    group: int = 1
    scores: Tensor | None = None
    keep: Tensor | None = None
    alpha: Tensor | None = None
    excluded: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.alpha is None):
            raise ValueError("a pruning plan needs exactly one of keep or alpha")
        if self.scores is None and self.layer < 1:
            raise ValueError("attention-scored pruning (fastv) needs layer >= 1")

    @property
    def n_visual(self) -> int:
        return self.n_groups * self.group


@dataclass
class PrefillReport:
    """What the prefill kept: ``kept_groups`` [B] and the kept visual token indices (relative to the
    visual span, ``-1`` padded) ``kept_visual`` [B, n_visual]."""

    kept_groups: Tensor
    kept_visual: Tensor


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


class PrunedDecoder:
    """:class:`~fast3d_cli.generation.Decoder` that physically removes the pruned visual tokens at layer K."""

    def __init__(self, llm: nn.Module, plan: PruningPlan) -> None:
        self.runner = _LayerRunner(llm)
        if not 0 <= plan.layer < self.runner.n_layers:
            raise ValueError(f"pruning layer {plan.layer} outside [0, {self.runner.n_layers})")
        self.plan = plan
        self.stages = [Stage(0, plan.layer), Stage(plan.layer, self.runner.n_layers)]
        self.report: PrefillReport | None = None

    @torch.no_grad()
    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, DecodeState]:
        from fast3d_kernels import select_gather
        from transformers import DynamicCache

        runner, plan = self.runner, self.plan
        mask, hidden, positions, full_valid = runner.prompt(inputs_embeds, attention_mask)
        visual_start = plan.visual_start.to(runner.device)
        cache = DynamicCache(config=runner.llm.config)
        scores = plan.scores
        if plan.layer > 0:
            hidden, attention = self._run_full_stage(hidden, positions, full_valid, visual_start, cache)
            if scores is None:
                scores = group_scores_from_attention(attention, plan.group)
        scores = scores.to(runner.device).float()
        if plan.excluded is not None:
            scores = scores.masked_fill(plan.excluded.to(runner.device), float("-inf"))
        budget = (
            {"k": plan.keep.to(runner.device)}
            if plan.keep is not None
            else {"alpha": plan.alpha.to(runner.device)}
        )
        gathered = select_gather(
            hidden,
            positions,
            scores,
            group=plan.group,
            span_start=visual_start,
            valid_start=(mask.shape[1] - mask.sum(-1)),
            **budget,
        )
        length = int(gathered.lengths.max())  # the one host synchronisation: the new sequence length
        width = gathered.values.shape[1]
        hidden = gathered.values[:, width - length :]
        positions = gathered.positions[:, width - length :]
        pruned_valid = gathered.index[:, width - length :] >= 0
        hidden = runner.run(self.stages[1], hidden, positions, pruned_valid, cache)
        self.report = self._report(gathered.index, gathered.kept_groups, visual_start)
        state = runner.state(self.stages, cache, mask, (full_valid, pruned_valid))
        return runner.logits(hidden[:, -1]), state

    def _run_full_stage(
        self, hidden: Tensor, positions: Tensor, valid: Tensor, visual_start: Tensor, cache
    ) -> tuple[Tensor, Tensor | None]:
        """Layers [0, K) on the whole prompt; with FastV also the last prompt token's head-mean attention
        over the visual tokens at layer K-1, recomputed for that one row (no eager attention)."""
        if self.plan.scores is not None:
            return self.runner.run(self.stages[0], hidden, positions, valid, cache), None
        from fast3d_cli.attention.capture import AttentionCapture, capturing

        capture = AttentionCapture(hidden.shape[1] - 1, visual_start, self.plan.n_visual)
        with capturing(self.runner.llm, capture):
            hidden = self.runner.run(self.stages[0], hidden, positions, valid, cache)
        return hidden, capture.layers[self.plan.layer - 1][:, 0].float()

    def _report(self, index: Tensor, kept_groups: Tensor, visual_start: Tensor) -> PrefillReport:
        relative = index - visual_start[:, None]
        is_visual = (index >= 0) & (relative >= 0) & (relative < self.plan.n_visual)
        n = self.plan.n_visual
        order = torch.where(is_visual, relative, n).sort(dim=1).values[:, :n]
        return PrefillReport(
            kept_groups=kept_groups.cpu(), kept_visual=order.masked_fill(order == n, -1).cpu()
        )

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        return self.runner.step(self.stages, token_ids, state)

    def select(self, state: DecodeState, row_index: Tensor) -> DecodeState:
        return select_state(state, row_index)


class MaskedDecoder:
    """The official protocol (spec §5.1) for a static keep set: nothing is removed; at layers >= K the keys
    of pruned visual tokens are masked for every query, in prefill and in every decode step."""

    def __init__(self, llm: nn.Module, layer: int, visual_start: Tensor, keep_visual: Tensor) -> None:
        """``keep_visual`` [B, n_visual] bool: which visual tokens stay visible from layer ``layer`` on."""
        self.runner = _LayerRunner(llm)
        self.layer = layer
        self.visual_start = visual_start
        self.keep_visual = keep_visual
        self.stages = [Stage(0, layer), Stage(layer, self.runner.n_layers)]

    @torch.no_grad()
    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, DecodeState]:
        from transformers import DynamicCache

        runner = self.runner
        mask, hidden, positions, full_valid = runner.prompt(inputs_embeds, attention_mask)
        columns = self.visual_start.to(runner.device)[:, None] + torch.arange(
            self.keep_visual.shape[1], device=runner.device
        )
        pruned_valid = full_valid.scatter(
            1, columns, full_valid.gather(1, columns) & self.keep_visual.to(runner.device)
        )
        cache = DynamicCache(config=runner.llm.config)
        hidden = runner.run(self.stages[0], hidden, positions, full_valid, cache)
        hidden = runner.run(self.stages[1], hidden, positions, pruned_valid, cache)
        state = runner.state(self.stages, cache, mask, (full_valid, pruned_valid))
        return runner.logits(hidden[:, -1]), state

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        return self.runner.step(self.stages, token_ids, state)

    def select(self, state: DecodeState, row_index: Tensor) -> DecodeState:
        return select_state(state, row_index)
