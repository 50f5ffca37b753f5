"""A configured pruning method for one evaluation: builds, per batch, the decoder that generates with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fast3d_cli.data import DataConfig, Sample, SceneBank
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint
from fast3d_cli.pruning.methods import (
    Budget,
    MethodSpec,
    PruningSettings,
    method_store_alpha,
    resolve_budget,
    validate,
)
from fast3d_cli.pruning.scorers import (
    StoreMaps,
    divprune_features,
    divprune_scores,
    random_scores,
    to_granularity,
)

TOKENS_PER_OBJECT = 3


@dataclass
class BatchPlan:
    """The decoder for one batch and, once it has prefilled, the visual tokens each sample kept."""

    decoder: Any
    n_visual: int
    rows: int

    def kept_tokens(self) -> list[int]:
        report = getattr(self.decoder, "report", None)
        if report is None:  # dense
            return [self.n_visual] * self.rows
        return (report.kept_visual >= 0).sum(-1).tolist()

    def kept_stage_tokens(self) -> list[list[int] | None]:
        """Per sample, the visual tokens kept after each drop (None unless the plan drops several times)."""
        report = getattr(self.decoder, "report", None)
        if report is None or len(report.stages) < 2:
            return [None] * self.rows
        return torch.stack([(kept >= 0).sum(-1) for kept in report.stages], dim=1).tolist()

    def kept_objects(self) -> list[list[int] | None]:
        """Per sample, the object slots with at least one kept token (None when nothing was pruned)."""
        report = getattr(self.decoder, "report", None)
        if report is None:
            return [None] * self.rows
        rows = report.kept_visual.tolist()
        return [sorted({int(t) // TOKENS_PER_OBJECT for t in row if t >= 0}) for row in rows]


def store_data_problems(data: DataConfig) -> Any:
    features = files_fingerprint([data.path(data.feats_3d), data.path(data.feats_2d)])

    def problems(store: Any) -> list[str]:
        found = [] if store.attrs.get("data") == features else ["data (object features)"]
        for group in store.groups():
            path = data.annotation_path(group.task, group.split)
            if path.is_file() and group.attrs.get("annotation") != files_fingerprint([path]):
                found.append(f"annotation ({group.task}/{group.split})")
                break
        return found

    return problems


class Pruner:
    """``settings`` resolved against a model, the data and the maps/GAP network they name."""

    def __init__(
        self, settings: PruningSettings, model: Any, model_fingerprint: str, data: DataConfig
    ) -> None:
        n_layers = model.llm.config.num_hidden_layers
        self.spec: MethodSpec = validate(settings, n_layers)
        self.settings = settings
        self.model = model
        self.data = data
        self.maps: StoreMaps | None = None
        self.gap: tuple[Any, Any] | None = None
        self.gap_fingerprint: str | None = None
        if settings.maps is not None:
            kinds, problems = self.spec.map_kinds, store_data_problems(data)
            self.maps = StoreMaps(settings.maps, kinds, model_fingerprint, problems, settings.force)
        if settings.gap is not None:
            self.gap = self._load_gap(settings, model_fingerprint)
        n_objects = model.config.max_obj_num
        if self.maps is not None:
            self.maps.check_objects(n_objects)
        self.adaptive_mean_kept: float | None = None  # --fixed-count: the SAP mean it replaces
        store_alpha = method_store_alpha(self.spec, settings, self.maps, data) if self.maps else None
        self.budget: Budget = resolve_budget(self.spec, settings, n_layers, n_objects, store_alpha)

    def _load_gap(self, settings: PruningSettings, model_fingerprint: str) -> tuple[Any, Any]:
        from fast3d_cli.gap.predict import training_provenance
        from fast3d_cli.gap.sources import GAPSource

        source = GAPSource.from_path(settings.gap)
        self.gap_fingerprint = source.fingerprint()
        trained_for = training_provenance(source).get("model")
        if trained_for is not None and trained_for != model_fingerprint and not settings.force:
            raise UserError(
                f"the GAP network {settings.gap} was trained on maps of another model; use --force to use it"
            )
        return source.load(device=str(self.model.device))

    @property
    def is_dense(self) -> bool:
        return self.spec.budget == "none"

    def describe(self) -> dict[str, Any]:
        b = self.budget
        return {
            "method": self.spec.name,
            "layer": b.layer,
            "granularity": self.settings.granularity,
            "keep": b.keep,
            "alpha": b.alpha,
            "n_layers": b.n_layers,
            "n_visual": b.n_visual,
            "fixed_count": self.settings.fixed_count,
            "sap_mean_kept_objects": self.adaptive_mean_kept,
            **self._describe_stages(),
        }

    def _describe_stages(self) -> dict[str, Any]:
        b = self.budget
        if not b.layers:
            return {}
        return {"layers": list(b.layers), "stage_keep": list(b.stage_keep) or None, "threshold": b.threshold}

    def resolved_identity(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """What the settings resolved to, as far as it changes the predictions: the maps store (absolute
        location) or the GAP network (fingerprint), and per task the budget (``--alpha auto``'s value, the
        ``--fixed-count`` count) and the fingerprint of the maps rows it reads. A resumed evaluation must
        resolve to the same values."""
        b = self.budget
        tasks: dict[str, dict[str, Any]] = {}
        for sample in samples:
            tasks.setdefault(sample.task, {"keep": b.keep, "alpha": b.alpha, "split": sample.split})
            if b.layers:  # multi-stage: every drop and its budget (single-drop identities stay unchanged)
                tasks[sample.task] |= {"layers": list(b.layers), "stage_keep": list(b.stage_keep)}
                tasks[sample.task]["threshold"] = b.threshold
        if self.maps is not None:
            for task, entry in tasks.items():
                rows = [s for s in samples if s.task == task]
                entry["maps_rows"] = self.maps.rows_fingerprint(task, entry["split"], rows)
        for entry in tasks.values():
            entry.pop("split")
        maps = None if self.maps is None else self.maps.store.path.resolved()
        return {"maps": maps, "gap": self.gap_fingerprint, "tasks": tasks}

    def check_samples(self, samples: Sequence[Sample]) -> None:
        """Refuse (exit 2) when the maps store lacks samples to evaluate."""
        if self.maps is None:
            return
        by_group: dict[tuple[str, str], list[Sample]] = {}
        for sample in samples:
            by_group.setdefault((sample.task, sample.split), []).append(sample)
        for (task, split), rows in by_group.items():
            self.maps.check_covers(task, split, rows)
        if self.settings.fixed_count:
            self._fix_count(samples)

    def _fix_count(self, samples: Sequence[Sample]) -> None:
        """--fixed-count: one object count for every request, the SAP budgets' mean over the evaluated
        samples rounded to the nearest integer (for engines that size visual placeholders up front)."""
        from dataclasses import replace

        from fast3d_cli.pruning.budgets import sap_keep_counts

        scores = self.maps.scores(samples)
        if self.settings.skip_padding:  # the same ranking the requests get
            banks = {split: SceneBank(self.data, split) for split in {s.split for s in samples}}
            padding = torch.cat([self._padding([s], banks[s.split]) for s in samples])
            scores = scores.masked_fill(padding, float("-inf"))
        counts = sap_keep_counts(scores.numpy(), self.budget.alpha)
        self.adaptive_mean_kept = round(float(counts.mean()), 4)
        self.budget = replace(self.budget, keep=round(float(counts.mean())), alpha=None)

    def plan(self, samples: Sequence[Sample], inputs: Any, bank: SceneBank) -> BatchPlan:
        """The decoder for one built batch (``inputs``: :class:`ModelInputs` of the prompts)."""
        from fast3d_cli.generation import HFCausalLMDecoder
        from fast3d_cli.pruning.engine import PrunedDecoder, PruningPlan

        n_visual = self.model.config.n_visual_tokens
        if self.is_dense:
            return BatchPlan(HFCausalLMDecoder(self.model.llm), n_visual, len(samples))
        b = self.budget
        if self.spec.budget == "anchored":
            return self._anchored_plan(samples, inputs, bank)
        excluded = self._padding(samples, bank) if self.settings.skip_padding else None
        if self.spec.multistage:  # scored from attention at each drop point, in the engine
            plan = self._multistage_plan(inputs, len(samples), excluded)
            return BatchPlan(PrunedDecoder(self.model.llm, plan), n_visual, len(samples))
        scores = self._scores(samples, inputs, bank, excluded)
        rows = len(samples)
        plan = PruningPlan(
            layer=b.layer,
            visual_start=inputs.visual_start,
            n_groups=b.n_groups,
            group=b.group,
            scores=scores,
            keep=None if b.keep is None else torch.full((rows,), b.keep, dtype=torch.long),
            alpha=None if b.alpha is None else torch.full((rows,), b.alpha, dtype=torch.float32),
            excluded=excluded,
        )
        return BatchPlan(PrunedDecoder(self.model.llm, plan), n_visual, rows)

    def _multistage_plan(self, inputs: Any, rows: int, excluded: Tensor | None) -> Any:
        from fast3d_cli.pruning.engine import PruningPlan
        from fast3d_cli.pruning.multistage import drop_points, plan_fields

        b = self.budget
        points = drop_points(self.spec.scorer, b, rows)
        return PruningPlan(
            visual_start=inputs.visual_start,
            n_groups=b.n_groups,
            group=b.group,
            excluded=excluded,
            **plan_fields(points),  # type: ignore[arg-type]
        )

    def _anchored_plan(self, samples: Sequence[Sample], inputs: Any, bank: SceneBank) -> BatchPlan:
        """Anchored SAP: the kept objects are chosen per row here; the engine keeps exactly them."""
        from fast3d_cli.pruning.anchored import kept_mask
        from fast3d_cli.pruning.engine import PrunedDecoder, PruningPlan

        b = self.budget
        objects = self.maps.scores(samples) if self.maps is not None else self._gap_scores(samples, bank)
        kept = torch.from_numpy(kept_mask(objects.numpy(), samples, bank, b.alpha))
        plan = PruningPlan(
            layer=b.layer,
            visual_start=inputs.visual_start,
            n_groups=b.n_groups,
            group=b.group,
            scores=kept.float(),
            keep=kept.sum(1).long(),
        )
        return BatchPlan(PrunedDecoder(self.model.llm, plan), self.model.config.n_visual_tokens, len(samples))

    def _padding(self, samples: Sequence[Sample], bank: SceneBank) -> Tensor:
        """[B, M] True for the groups of padding objects (all-zero 3D and 2D features, spec §2.5)."""
        rows = []
        for sample in samples:
            f3d, f2d = bank.object_features(sample.scene_id)
            rows.append((f3d.abs().sum(-1) == 0) & (f2d.abs().sum(-1) == 0))
        objects = torch.stack(rows)
        return to_granularity(objects.float(), TOKENS_PER_OBJECT, self.budget.group).bool()

    def _scores(
        self, samples: Sequence[Sample], inputs: Any, bank: SceneBank, excluded: Tensor | None
    ) -> Tensor | None:
        b, scorer = self.budget, self.spec.scorer
        if scorer == "fastv":
            return None
        if scorer == "random":
            return random_scores(samples, b.n_groups, self.settings.seed)
        if scorer == "divprune":
            features = divprune_features(visual_embeddings(inputs, b.n_visual), TOKENS_PER_OBJECT, b.group)
            return divprune_scores(features, b.keep, excluded)
        if scorer == "maps":
            objects = self.maps.scores(samples) if self.maps is not None else self._gap_scores(samples, bank)
            return to_granularity(objects, TOKENS_PER_OBJECT, b.group)
        if scorer == "cdpruner":
            return self._cdpruner_scores(samples, inputs, excluded)
        if scorer == "coverage":
            return self._coverage_scores(samples, bank, excluded)
        raise AssertionError(f"no scorer {scorer!r}")

    def _cdpruner_scores(self, samples: Sequence[Sample], inputs: Any, excluded: Tensor | None) -> Tensor:
        from fast3d_cli.pruning.selection import cdpruner_scores

        b = self.budget
        embeds = visual_embeddings(inputs, b.n_visual)
        features = divprune_features(embeds, TOKENS_PER_OBJECT, b.group)
        instruction = instruction_embeddings(self.model, samples).to(embeds.device)
        return cdpruner_scores(features, relevance_features(embeds, b.group), instruction, b.keep, excluded)

    def _coverage_scores(self, samples: Sequence[Sample], bank: SceneBank, excluded: Tensor | None) -> Tensor:
        from fast3d_cli.pruning.selection import coverage_scores, expand_to_tokens

        b = self.budget
        centers, padding = object_centers(samples, bank, self.model.config.max_obj_num)
        if excluded is not None:  # --skip-padding at object granularity: the same objects
            padding = padding | to_granularity(excluded.float(), b.group, TOKENS_PER_OBJECT).bool()
        steps = -(-b.keep // TOKENS_PER_OBJECT) if b.group == 1 else b.keep
        objects = coverage_scores(centers, steps, padding)
        return objects if b.group == TOKENS_PER_OBJECT else expand_to_tokens(objects, TOKENS_PER_OBJECT)

    def _gap_scores(self, samples: Sequence[Sample], bank: SceneBank) -> Tensor:
        from fast3d_cli.gap.predict import predict_chunk

        gap_model, tokenizer = self.gap
        precision = "bfloat16-autocast" if self.model.device.type == "cuda" else "float32"
        arrays = predict_chunk(gap_model, tokenizer, bank, samples, len(samples), precision)
        return torch.from_numpy(arrays["object_scores"]).float()


def visual_embeddings(inputs: Any, n_visual: int) -> Tensor:
    """[B, n_visual, H] visual token embeddings of a built batch."""
    columns = inputs.visual_start.to(inputs.inputs_embeds.device)[:, None] + torch.arange(
        n_visual, device=inputs.inputs_embeds.device
    )
    embeds = inputs.inputs_embeds
    return embeds.gather(1, columns[..., None].expand(-1, -1, embeds.shape[-1]))


def relevance_features(visual: Tensor, group: int) -> Tensor:
    """What CDPruner compares with the instruction: per object the mean of its 3D and 2D projected tokens
    (the identifier embedding is the same in every scene); per token, the token embedding."""
    if group == 1:
        return visual
    batch, n_tokens, hidden = visual.shape
    triplets = visual.reshape(batch, n_tokens // TOKENS_PER_OBJECT, TOKENS_PER_OBJECT, hidden)
    return triplets[:, :, 1:].mean(dim=2)


def instruction_embeddings(model: Any, samples: Sequence[Sample]) -> Tensor:
    """[B, 1, H] CDPruner's instruction embedding in the LLM input space: the mean of the token embeddings
    of " {prompt} " (the user's question, without the role markers), from the model's embedding table."""
    rows = []
    for sample in samples:
        ids = model.layout.encode(f" {sample.prompt} ") or [model.tokenizer.unk_token_id or 0]
        tokens = torch.tensor(ids, dtype=torch.long, device=model.device)
        rows.append(model.embed_tokens(tokens).float().mean(dim=0, keepdim=True))
    return torch.stack(rows)


def object_centers(samples: Sequence[Sample], bank: SceneBank, n_objects: int) -> tuple[Tensor, Tensor]:
    """[B, N, 3] box centres of each sample's object slots (the proposal ``locs``) and [B, N] True for
    padding slots (no box, or all-zero 3D and 2D features)."""
    centers = torch.zeros(len(samples), n_objects, 3)
    padding = torch.ones(len(samples), n_objects, dtype=torch.bool)
    for i, sample in enumerate(samples):
        locs = torch.as_tensor(bank.proposal_locs(sample.scene_id), dtype=torch.float32)[:n_objects]
        f3d, f2d = bank.object_features(sample.scene_id)
        centers[i, : len(locs)] = locs[:, :3]
        padding[i, : len(locs)] = False
        padding[i] |= (f3d.abs().sum(-1) == 0) & (f2d.abs().sum(-1) == 0)
    return centers, padding
