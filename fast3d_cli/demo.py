"""``fast3d demo``: the whole chain on the embedded sample world, in a few minutes on a CPU.

extract (a train subset, and val for the oracle) -> train-gap -> predict (val) -> search-alpha (90%) -> eval
of every row of the paper's table (:mod:`fast3d_cli.evaluation.paper_table`), then the table. Every step is
the library call the CLI stage makes, so each output is a normal artifact (store, GAP directory, evaluation
directory) that the other commands accept.
Rerunning resumes: finished stages are reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fast3d_cli.data.tasks import TASKS
from fast3d_cli.evaluation.paper_table import paper_rows, row_slug

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """The GAP learns from 1,000 train samples per task for 8 epochs (~1,130 steps): with 500 (560 steps) its
    holdout KL had not yet dropped and GAP+SAP read 84-88% instead of the README's ~96% (docs/demo-gap.md;
    settings chosen on the train holdout's ``evidence_top10``, never on val). The table evaluates the first
    40 val samples per task (benchmarks/sample_pruning.py runs more)."""

    train_limit: int = 1000  # train samples per task for the GAP (the sample world has 1.3k-3k per task)
    epochs: int = 8
    gap_lr: float = 8e-4  # the GAP's learning rate (its text encoder's too: it is trained from scratch)
    target_ratio: float = 90.0
    eval_limit: int | None = 40  # val samples per task (None: all, ~440)
    num_beams: int = 5
    max_new_tokens: int = 64
    batch_size: int = 16
    device: str = "auto"

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(TASKS)


def run_demo(
    out: Path, settings: DemoSettings, log: Log, progress: Any = None, train_progress: Any = None
) -> dict[str, Any]:
    """Run every stage into ``out``; returns {"rows": [...], "paths": {...}}. ``log`` gets a line per
    phase, ``progress`` the (name, done, total) of extract, predict and eval, ``train_progress`` train-gap's
    events."""
    from fast3d_cli.attention.extract import ExtractSettings, extract
    from fast3d_cli.cli.common import default_model_dir
    from fast3d_cli.data.config import DataConfig
    from fast3d_cli.evaluation import EvalSettings, run_pruned_eval
    from fast3d_cli.gap.predict import PredictSettings, predict
    from fast3d_cli.gap.training import TrainSettings, train_gap
    from fast3d_cli.generation import GenerationConfig
    from fast3d_cli.metrics.ratio import format_score_ratio
    from fast3d_cli.models.loading import ModelSource, resolve_device
    from fast3d_cli.pruning.alpha_search import search_alpha
    from fast3d_cli.pruning.methods import PruningSettings

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = DataConfig()
    device = resolve_device(settings.device)
    source = ModelSource(model_dir=default_model_dir())
    log(f"loading the sample model ({source.describe()})")
    model, fingerprint = source.load(device=device), source.fingerprint()
    maps, val_maps, gap, pred = out / "maps.zarr", out / "maps_val.zarr", out / "gap", out / "pred.zarr"

    log("1/5 extract: attention maps of the sample model (a train subset for the GAP, val for the oracle)")
    stores = ((maps, "train", settings.train_limit), (val_maps, "val", settings.eval_limit))
    for store, split, limit in stores:
        extract_settings = ExtractSettings(tasks=settings.tasks, splits=(split,), limit=limit)
        extract(model, fingerprint, data, extract_settings, store, command="fast3d demo", progress=progress)
    log("2/5 train-gap: the GAP network learns the maps")
    gap_settings = TrainSettings(
        epochs=settings.epochs, lr=settings.gap_lr, tasks=settings.tasks, init_from_target=True
    )
    train_gap([maps], gap, gap_settings, data, device=device,
              command="fast3d demo", progress=train_progress, phase=log)  # fmt: skip
    log("3/5 predict: GAP maps for val")
    predict(gap, data, PredictSettings(tasks=settings.tasks, limit=settings.eval_limit), pred, device=device,
            command="fast3d demo", progress=progress, phase=log)  # fmt: skip
    log(f"4/5 search-alpha: SAP alpha for {settings.target_ratio:g}% pruning")
    alpha = search_alpha(pred, settings.target_ratio)
    log(f"    alpha {alpha.alpha:g}: {alpha.ratio:.2f}% pruned on average")
    log("5/5 eval: the paper's table (dense, FastV, GAP, GAP+SAP, random, DivPrune, oracle)")
    base = EvalSettings(
        tasks=settings.tasks,
        batch_size=settings.batch_size,
        limit=settings.eval_limit,
        generation=GenerationConfig(num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens),
    )
    rows, paths = [], {"maps": maps, "val maps": val_maps, "gap": gap, "pred": pred}
    for label, options in paper_rows(model.llm.config.num_hidden_layers, pred, val_maps):
        run_dir = out / "eval" / row_slug(options)
        result = run_pruned_eval(
            model, fingerprint, data, replace(base, pruning=PruningSettings(**options)), run_dir,
            out / "eval" / "dense", progress=progress, phase=log,
        )  # fmt: skip
        paths[f"eval {run_dir.name}"] = run_dir
        rows.append(table_row(label, result))
        row = rows[-1]
        shown = format_score_ratio(row["score_ratio"], row["score_ratio_reason"], row["score_ratio_ci"])
        log(f"    {label}: score ratio {shown}")
    return {"rows": rows, "alpha": alpha.to_dict(), "paths": {k: str(v) for k, v in paths.items()}}


def table_row(label: str, result: dict[str, Any]) -> dict[str, Any]:
    """One row of the comparison table. The dense run is the reference: 100% (no interval), or n/a where its
    own headline is negligible (`dense_ratio_entry`, the rule of every score ratio); a pruned run's
    undefined score ratio stays None with its reason (never shown as a number), and its confidence interval
    is the ``ci95`` of metrics.json (None without one)."""
    from fast3d_cli.metrics.ratio import dense_ratio_entry  # metrics load numpy: not at CLI start-up

    pruning = result["pruning"]
    dense = pruning["method"] == "none"
    ratio = dense_ratio_entry(result["headline"]) if dense else result.get("score_ratio") or {}
    reason = ratio.get("reason") or ratio.get("error") or (None if ratio else "no dense baseline")
    return {
        "method": label,
        "headline": result["headline"],
        "score_ratio": ratio.get("value"),
        "score_ratio_reason": reason,
        "score_ratio_ci": None if dense else ratio.get("ci95"),
        "score_ratio_resamples": None if dense else ratio.get("n_resamples"),
        "score_ratio_resamples_undefined": None if dense else ratio.get("n_undefined"),
        "layer_averaged_ratio": pruning["layer_averaged_ratio"],
        "input_ratio": pruning["input_ratio"],
        "mean_kept_objects": pruning["mean_kept_tokens"] / 3,
        "flops_ratio": pruning["flops_ratio"],
        "samples_per_s": result["speed"].get("samples_per_s"),
    }
