"""Budget rules for GAP+SAP at matched ~90% pruning, chosen on TRAIN-HELD-OUT samples (issue 18, items 5-6).

Protocol (nothing here reads the val samples that the paper table reports):

    fast3d extract --tasks all --split train --limit 1000 -o runs/sap/maps.zarr
    fast3d train-gap runs/sap/maps.zarr --limit 700 --init-from-target -o runs/sap/gap   # fit: first 700/task
    fast3d predict runs/sap/gap --split train --limit 1000 -o runs/sap/pred_train.zarr
    python benchmarks/sap_budget_rules.py runs/sap --fit 700 --holdout 300

The held-out samples are train annotations ``[fit, fit + holdout)`` of each task: the GAP never trained on
them. Every rule (``fast3d_cli.pruning.budget_rules``) gets its free parameter (SAP's alpha) calibrated so
that the task-averaged mean kept count is ``--kept`` objects (10 = 90% input-level pruning of 100 objects,
the paper's 90% at K = 0, as `search-alpha` averages tasks); ``fixed`` keeps exactly that many. The model
then answers each held-out sample with only the kept objects (pruned before layer 0), and each rule's score
ratio against the dense answers is reported with its paired-bootstrap 95% interval, per task too, with the
mean kept count per task. Answers are cached by (sample, kept set, beams) in
``RUN/rule_cache_<split>.json`` (``--cache NAME-x.json`` for a parallel run: every ``NAME*.json`` is read),
so rules that keep the same objects cost nothing.

--maps-split val with --fit 0 --holdout 200 evaluates the same rules on a val prediction store instead (the
final numbers, not the selection).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result

TASKS = ("scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d")


@dataclass
class RuleRow:
    label: str
    rule: str
    source: str  # "gap" (the prediction store) or "oracle" (the extracted maps)
    params: dict[str, Any] = field(default_factory=dict)
    calibrate: bool = True  # search alpha for the kept target
    skip_padding: bool = False
    per_task_alpha: bool = False
    task_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-task overrides of params


# Per-task budgets learned from train-held-out maps only (no answers): greedy allocation of 50 objects
# (mean 10) by the marginal gain in extracted-attention mass that the GAP's top k (padding last) covers.
LEARNED_KEEP = {"scanrefer": 13, "multi3dref": 10, "scan2cap": 4, "scanqa": 14, "sqa3d": 9}


def default_rows() -> list[RuleRow]:
    rows = [
        RuleRow("GAP fixed 10", "fixed", "gap", {"keep": 10}, calibrate=False),
        RuleRow("GAP+SAP", "sap", "gap"),
        RuleRow("GAP+SAP per-task alpha", "sap", "gap", per_task_alpha=True),
        RuleRow("GAP+SAP skip-padding", "sap", "gap", skip_padding=True),
    ]
    rows += [RuleRow(f"GAP+SAP floor {f}", "sap_floor", "gap", {"floor": f}) for f in (3, 5, 7)]
    rows += [RuleRow("GAP+SAP floor 5 cap 20", "sap_floor", "gap", {"floor": 5, "cap": 20})]
    rows += [RuleRow("GAP+SAP floor 5 skip-padding", "sap_floor", "gap", {"floor": 5}, skip_padding=True)]
    rows += [
        RuleRow("anchored floor 0 nb 2", "anchored", "gap", {"floor": 0, "neighbours": 2}, skip_padding=True)
    ]
    rows += [
        RuleRow(
            f"anchored floor {f} nb {n}", "anchored", "gap", {"floor": f, "neighbours": n}, skip_padding=True
        )
        for f, n in ((5, 1), (5, 2), (5, 3), (7, 2), (3, 2))
    ]
    learned = {t: {"floor": k, "cap": k} for t, k in LEARNED_KEEP.items()}
    rows += [
        RuleRow(
            "anchored learned per-task budget",
            "anchored",
            "gap",
            {"alpha": 1e-9, "neighbours": 2},
            calibrate=False,
            skip_padding=True,
            task_params=learned,
        )
    ]
    rows += [
        RuleRow("Oracle fixed 10", "fixed", "oracle", {"keep": 10}, calibrate=False),
        RuleRow("Oracle+SAP", "sap", "oracle"),
    ]
    return rows


def calibrate_alpha(mean_kept: Any, target: float, iterations: int = 40) -> float:
    """Bisection on alpha (mean kept is non-decreasing in it): the alpha with the mean closest to target."""
    lo, hi = 1e-9, 1.0
    if mean_kept(hi) <= target:
        return hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_kept(mid) < target else (lo, mid)
    return lo if abs(mean_kept(lo) - target) < abs(mean_kept(hi) - target) else hi


class HeldOut:
    """The held-out samples, their scores (GAP and oracle), prompts, proposal centres and padding masks."""

    def __init__(self, run_dir: Path, data: Any, split: str, fit: int, holdout: int, pred: str) -> None:
        from fast3d_cli.data import SceneBank, load_samples
        from fast3d_cli.stores import open_store

        self.bank = SceneBank(data, split)
        self.samples = {t: load_samples(data, t, split)[fit : fit + holdout] for t in TASKS}
        stores = {
            "gap": open_store(run_dir / pred),
            "oracle": open_store(run_dir / f"maps_{split}.zarr" if split == "val" else run_dir / "maps.zarr"),
        }
        self.scores: dict[str, dict[str, np.ndarray]] = {}
        for source, store in stores.items():
            for task in TASKS:
                rows = dict(store.group(task, split).iter_samples(("object_scores",)))
                self.scores.setdefault(source, {})[task] = np.stack(
                    [rows[s.index]["object_scores"] for s in self.samples[task]]
                ).astype(np.float32)
        self.centres, self.padding = {}, {}
        for task, samples in self.samples.items():
            centres, padding = [], []
            for s in samples:
                f3d, f2d = self.bank.object_features(s.scene_id)
                padding.append(((f3d.abs().sum(-1) == 0) & (f2d.abs().sum(-1) == 0)).numpy())
                locs = np.asarray(self.bank.proposal_locs(s.scene_id), dtype=np.float64)[:, :3]
                full = np.full((len(padding[-1]), 3), 1e6)
                full[: len(locs)] = locs[: len(full)]
                centres.append(full)
            self.centres[task], self.padding[task] = np.stack(centres), np.stack(padding)

    def masks(self, row: RuleRow, alpha: float | None, task: str) -> np.ndarray:
        from fast3d_cli.pruning.budget_rules import RULES, RuleInputs

        inputs = RuleInputs(
            scores=self.scores[row.source][task],
            prompts=[s.prompt for s in self.samples[task]],
            centres=self.centres[task],
            excluded=self.padding[task] if row.skip_padding else None,
        )
        params = {**row.params, **row.task_params.get(task, {})}
        if row.rule != "fixed" and row.calibrate:
            params["alpha"] = alpha
        return RULES[row.rule](inputs, **params)

    def resolve(self, row: RuleRow, target: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per task the kept masks and the alpha used."""
        if not row.calibrate:
            return {t: self.masks(row, None, t) for t in TASKS}, {}
        if row.per_task_alpha:
            alphas = {
                t: calibrate_alpha(lambda a, t=t: self.masks(row, a, t).sum(1).mean(), target) for t in TASKS
            }
        else:
            alpha = calibrate_alpha(
                lambda a: np.mean([self.masks(row, a, t).sum(1).mean() for t in TASKS]), target
            )
            alphas = dict.fromkeys(TASKS, alpha)
        return {t: self.masks(row, alphas[t], t) for t in TASKS}, alphas


class Answerer:
    """Greedy/beam answers of the model with exactly the kept objects (cached by sample, kept set, beams)."""

    def __init__(self, model: Any, bank: Any, cache_path: Path, beams: int, batch_size: int) -> None:
        from fast3d_cli.generation import GenerationConfig

        self.model, self.bank, self.path, self.batch = model, bank, cache_path, batch_size
        self.config = GenerationConfig(num_beams=beams)
        self.beams = beams
        self.cache: dict[str, str] = {}  # every cache of the split beside this one is read (parallel runs)
        for path in sorted(cache_path.parent.glob(f"{cache_path.name.split('.')[0].split('-')[0]}*.json")):
            self.cache.update(json.loads(path.read_text()))

    def key(self, sample: Any, kept: np.ndarray | None) -> str:
        ids = "dense" if kept is None else ",".join(map(str, np.flatnonzero(kept)))
        return f"{sample.task}/{sample.split}/{sample.index}/b{self.beams}/{ids}"

    def answers(self, samples: list[Any], masks: np.ndarray | None) -> list[str]:
        keys = [self.key(s, None if masks is None else masks[i]) for i, s in enumerate(samples)]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            texts = self._generate([samples[i] for i in chunk], None if masks is None else masks[chunk])
            self.cache.update({keys[i]: text for i, text in zip(chunk, texts, strict=True)})
        if todo:
            self.path.write_text(json.dumps(self.cache))
        return [self.cache[k] for k in keys]

    def _generate(self, samples: list[Any], masks: np.ndarray | None) -> list[str]:
        import torch

        from fast3d_cli.generation import HFCausalLMDecoder, decode_batch, generate
        from fast3d_cli.pruning.engine import PrunedDecoder, PruningPlan

        feats = [self.bank.object_features(s.scene_id) for s in samples]
        with torch.inference_mode():
            inputs = self.model.build_inputs(
                [s.prompt for s in samples],
                torch.stack([f[0] for f in feats]),
                torch.stack([f[1] for f in feats]),
            )
            if masks is None:
                decoder = HFCausalLMDecoder(self.model.llm)
            else:
                kept = torch.from_numpy(np.asarray(masks))
                plan = PruningPlan(
                    layer=0,
                    visual_start=inputs.visual_start,
                    n_groups=kept.shape[1],
                    group=3,
                    scores=kept.float(),
                    keep=kept.sum(1).long(),
                )
                decoder = PrunedDecoder(self.model.llm, plan)
            tok = self.model.tokenizer
            ids = generate(
                decoder,
                inputs.inputs_embeds,
                inputs.attention_mask,
                self.config,
                eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id,
            )
        return decode_batch(self.model.tokenizer, ids)


def evaluate(
    held: HeldOut, answerer: Answerer, data: Any, masks: dict[str, np.ndarray] | None
) -> dict[str, Any]:
    """Per task the TaskEvaluation of the answers with ``masks`` (None = dense)."""
    from fast3d_cli.evaluation.runner import prediction_record
    from fast3d_cli.metrics import MetricContext, MetricOptions, evaluate_task

    context = MetricContext(
        proposal_attributes=held.bank.proposal_attributes, gt_attributes=held.bank.gt_attributes
    )
    context.caption_scorer = _scorer()
    out = {}
    for task in TASKS:
        samples = held.samples[task]
        texts = answerer.answers(samples, None if masks is None else masks[task])
        samples = [with_references(s, context) for s in samples]
        records = [prediction_record(s, text, 0, 0) for s, text in zip(samples, texts, strict=True)]
        out[task] = evaluate_task(task, records, context, MetricOptions())
    return out


def with_references(sample: Any, context: Any) -> Any:
    """A train sample with val-style references: its training caption (Scan2Cap, ScanQA, SQA3D), or for
    ScanRefer/Multi3DRefer the GT objects that best overlap the proposals its caption names (its evidence)."""
    from dataclasses import replace

    from fast3d_cli.metrics import pairwise_box_iou

    if sample.split != "train" or sample.caption is None:
        return sample
    if sample.task not in ("multi3dref", "scanrefer"):
        return replace(sample, ref_captions=(sample.caption,))
    proposals = list(sample.evidence or ())
    if not proposals:
        return replace(sample, ref_captions=())
    boxes = context.proposal_boxes(sample.scene_id)[proposals]
    targets = tuple(
        sorted({int(j) for j in pairwise_box_iou(boxes, context.gt_boxes(sample.scene_id)).argmax(1)})
    )
    if sample.task == "scanrefer":  # train rows' obj_id is not the GT id; the referred proposal's best GT is
        return replace(sample, obj_id=targets[0])
    return replace(sample, ref_captions=targets)


_SCORER: Any = None


def _scorer() -> Any:
    global _SCORER
    if _SCORER is None:
        from fast3d_cli.metrics import CaptionScorer

        _SCORER = CaptionScorer()
    return _SCORER


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--fit", type=int, default=700, help="train samples per task the GAP was fitted on")
    parser.add_argument("--holdout", type=int, default=300, help="held-out samples per task after them")
    parser.add_argument("--maps-split", default="train", help="train (selection) or val (final numbers)")
    parser.add_argument("--pred", default=None, help="prediction store in RUN (default pred_<split>.zarr)")
    parser.add_argument("--kept", type=float, default=10.0, help="target task-averaged mean kept objects")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--name", default="sap_budget_rules")
    parser.add_argument("--cache", default=None, help="answer cache in RUN (default rule_cache_<split>.json)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from fast3d_cli.cli.common import default_model_dir
    from fast3d_cli.data.config import DataConfig
    from fast3d_cli.metrics import paired_bootstrap_score_ratio
    from fast3d_cli.models.loading import ModelSource

    data = DataConfig()
    model = ModelSource(model_dir=default_model_dir()).load(device="cpu", dtype="float32")
    held = HeldOut(
        args.run_dir,
        data,
        args.maps_split,
        args.fit,
        args.holdout,
        args.pred or f"pred_{args.maps_split}.zarr",
    )
    answerer = Answerer(
        model,
        held.bank,
        args.run_dir / (args.cache or f"rule_cache_{args.maps_split}.json"),
        args.num_beams,
        args.batch_size,
    )
    dense = evaluate(held, answerer, data, None)
    dense_units = {t: e.units for t, e in dense.items()}
    wanted = None if args.rows is None else set(args.rows.split(","))
    results = []
    for row in default_rows():
        if wanted is not None and row.label not in wanted:
            continue
        start = time.perf_counter()
        masks, alphas = held.resolve(row, args.kept)
        ratio = paired_bootstrap_score_ratio(
            {t: e.units for t, e in evaluate(held, answerer, data, masks).items()}, dense_units
        ).to_dict()
        kept = {t: round(float(m.sum(1).mean()), 3) for t, m in masks.items()}
        results.append(
            {
                "row": row.label,
                "rule": row.rule,
                "source": row.source,
                "params": row.params,
                "skip_padding": row.skip_padding,
                "alpha": alphas or None,
                "mean_kept_objects": round(float(np.mean(list(kept.values()))), 3),
                "kept_per_task": kept,
                "score_ratio": ratio["value"],
                "score_ratio_ci95": ratio["ci95"],
                "score_ratio_per_task": {t: v["value"] for t, v in ratio["per_task"].items()},
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        r = results[-1]
        shown = "n/a" if r["score_ratio"] is None else f"{r['score_ratio']:.2f} {r['score_ratio_ci95']}"
        undefined = "" if r["score_ratio"] is not None else f" ({ratio['undefined']})"
        print(f"{row.label}: {shown}{undefined} kept {kept} per task {r['score_ratio_per_task']}",
              file=sys.stderr, flush=True)  # fmt: skip
    path = write_result(
        args.name,
        {
            "benchmark": "sap_budget_rules",
            "environment": environment("cpu"),
            "tasks": TASKS,
            "split": args.maps_split,
            "fit": args.fit,
            "holdout": args.holdout,
            "kept_target": args.kept,
            "num_beams": args.num_beams,
            "rows": results,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
