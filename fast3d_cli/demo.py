"""``fast3d demo``: the whole chain on the embedded sample world, in a few minutes on a CPU.

extract (a train subset) -> train-gap -> predict (val) -> search-alpha (90%) -> eval for dense, FastV,
GAP and GAP+SAP, then the paper-style table. Every step is the library call the CLI stage makes, so each
output is a normal artifact (store, GAP directory, evaluation directory) that the other commands accept.
Rerunning resumes: finished stages are reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fast3d_cli.data.tasks import TASKS
from fast3d_cli.metrics.ratio import format_score_ratio

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    train_limit: int = 600  # train samples per task for the GAP (the full sample world has ~2.5k per task)
    epochs: int = 3
    target_ratio: float = 90.0
    eval_limit: int | None = None  # val samples per task (None: all)
    num_beams: int = 5
    max_new_tokens: int = 64
    batch_size: int = 16
    device: str = "auto"

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(TASKS)


def demo_rows(pred: Path, n_layers: int) -> list[tuple[str, dict[str, Any]]]:
    """The compared methods, each keeping 10 of the 100 objects. The paper prunes FastV at layer 2 of 32;
    a shallower model gets K scaled to its depth, at least 1 (FastV needs a layer's attention)."""
    fastv_layer = max(1, round(2 * n_layers / 32))
    return [
        ("dense", {"method": "none"}),
        (f"FastV (K={fastv_layer}, 10 obj)", {"method": "fastv", "layer": fastv_layer, "keep": 10}),
        ("GAP 90% (K=0, 10 obj)", {"method": "gap", "layer": 0, "keep": 10, "maps": pred}),
        ("GAP+SAP ~90% (K=0)", {"method": "gap+sap", "alpha": "auto", "maps": pred}),
        (
            "GAP+SAP ~90% (K=0, skip padding)",
            {"method": "gap+sap", "alpha": "auto", "maps": pred, "skip_padding": True},
        ),
    ]


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
    maps, gap, pred = out / "maps.zarr", out / "gap", out / "pred.zarr"

    log("1/5 extract: attention maps of the sample model (a train subset)")
    extract_settings = ExtractSettings(tasks=settings.tasks, splits=("train",), limit=settings.train_limit)
    extract(model, fingerprint, data, extract_settings, maps, command="fast3d demo", progress=progress)
    log("2/5 train-gap: the GAP network learns the maps")
    train_gap([maps], gap, TrainSettings(epochs=settings.epochs), data, device=device, command="fast3d demo",
              progress=train_progress, phase=log)  # fmt: skip
    log("3/5 predict: GAP maps for val")
    predict(gap, data, PredictSettings(tasks=settings.tasks), pred, device=device, command="fast3d demo",
            progress=progress, phase=log)  # fmt: skip
    log(f"4/5 search-alpha: SAP alpha for {settings.target_ratio:g}% pruning")
    alpha = search_alpha(pred, settings.target_ratio)
    log(f"    alpha {alpha.alpha:g}: {alpha.ratio:.2f}% pruned on average")
    padded = search_alpha(pred, settings.target_ratio, skip_padding=data)
    log(f"    with padding objects skipped: alpha {padded.alpha:g}: {padded.ratio:.2f}% pruned")
    log("5/5 eval: dense, FastV, GAP, GAP+SAP (official, and with padding objects skipped)")
    base = EvalSettings(
        tasks=settings.tasks,
        batch_size=settings.batch_size,
        limit=settings.eval_limit,
        generation=GenerationConfig(num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens),
    )
    rows, paths = [], {"maps": maps, "gap": gap, "pred": pred}
    for label, options in demo_rows(pred, model.llm.config.num_hidden_layers):
        run_dir = (
            out / "eval" / (options["method"] + ("-skip-padding" if options.get("skip_padding") else ""))
        )
        result = run_pruned_eval(
            model, fingerprint, data, replace(base, pruning=PruningSettings(**options)), run_dir,
            out / "eval" / "none", progress=progress, phase=log,
        )  # fmt: skip
        paths[f"eval {run_dir.name}"] = run_dir
        rows.append(table_row(label, result))
        row = rows[-1]
        shown = format_score_ratio(row["score_ratio"], row["score_ratio_reason"], row["score_ratio_ci"])
        log(f"    {label}: score ratio {shown}")
    return {"rows": rows, "alpha": alpha.to_dict(), "paths": {k: str(v) for k, v in paths.items()}}


def table_row(label: str, result: dict[str, Any]) -> dict[str, Any]:
    """One row of the comparison table. The dense run is the reference (100%, no interval); a pruned run's
    undefined score ratio stays None with its reason (never shown as a number), and its confidence interval
    is the ``ci95`` of metrics.json (None without one)."""
    pruning = result["pruning"]
    dense = pruning["method"] == "none"
    ratio = result.get("score_ratio") or {}
    reason = ratio.get("reason") or ratio.get("error") or (None if ratio else "no dense baseline")
    return {
        "method": label,
        "headline": result["headline"],
        "score_ratio": 100.0 if dense else ratio.get("value"),
        "score_ratio_reason": None if dense else reason,
        "score_ratio_ci": None if dense else ratio.get("ci95"),
        "score_ratio_resamples": None if dense else ratio.get("n_resamples"),
        "score_ratio_resamples_undefined": None if dense else ratio.get("n_undefined"),
        "layer_averaged_ratio": pruning["layer_averaged_ratio"],
        "input_ratio": pruning["input_ratio"],
        "mean_kept_objects": pruning["mean_kept_tokens"] / 3,
        "flops_ratio": pruning["flops_ratio"],
        "samples_per_s": result["speed"].get("samples_per_s"),
    }
