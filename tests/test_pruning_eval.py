"""Every pruning method through the evaluation: batch = rows, ratios and speed reported, refusals exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fast3d_cli.cli.app import run
from fast3d_cli.data import SceneBank, load_samples
from fast3d_cli.evaluation.runner import generate_answers
from fast3d_cli.generation import GenerationConfig
from fast3d_cli.models.loading import ModelSource
from fast3d_cli.pruning.methods import PruningSettings
from fast3d_cli.pruning.pruner import Pruner
from fast3d_cli.stores import open_store
from tests.test_gap_train import build_gap_inputs, build_trained_gap, fast3d

TASKS = "scanqa,scanrefer"


@pytest.fixture(scope="module")
def inputs(tiny_model, data_config, tmp_path_factory) -> dict[str, Path]:
    found = build_gap_inputs(tiny_model, data_config, tmp_path_factory)
    gap = build_trained_gap(found, data_config)
    pred = found["root"] / "pruning-pred.zarr"
    if not pred.exists():
        args = ["predict", str(gap), "--data-root", str(data_config.root), "-o", str(pred), "--tasks", TASKS]
        assert run([*args, "--split", "val"]) == 0
    return {**found, "gap": gap, "pred": pred}


@pytest.fixture(scope="module")
def target(inputs):
    source = ModelSource(model_dir=inputs["model"])
    return source.load(device="cpu", dtype="float32"), source.fingerprint()


METHODS = {
    "none": {},
    "random": {"keep": 5},
    "fastv": {"keep": 5, "layer": 1},
    "fastv-token": {"keep": 13, "layer": 1, "granularity": "token"},
    "divprune": {"keep": 5},
    "oracle": {"keep": 4, "maps": "store"},
    "gap": {"keep": 6, "maps": "pred"},
    "gap-online": {"keep": 6, "gap": "gap"},
    "gap+sap": {"alpha": 0.3, "maps": "pred"},
    "oracle+sap": {"alpha": 0.5, "maps": "store", "layer": 1},
}


def settings_for(name: str, inputs) -> PruningSettings:
    options = dict(METHODS[name])
    for key in ("maps", "gap"):
        if key in options:
            options[key] = inputs[options[key]]
    return PruningSettings(method=name.removesuffix("-token").removesuffix("-online"), **options)


@pytest.mark.parametrize("name", list(METHODS))
def test_batch_equals_rows_alone_for_every_method(name, inputs, target, data_config) -> None:
    model, fingerprint = target
    torch.set_num_threads(1)
    pruner = Pruner(settings_for(name, inputs), model, fingerprint, data_config)
    samples = load_samples(data_config, "scanqa", "val")[:4]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=2, max_new_tokens=4)
    together = generate_answers(model, bank, samples, config, pruner)
    for i, sample in enumerate(samples):
        alone = generate_answers(model, bank, [sample], config, pruner)
        assert alone.texts == [together.texts[i]]
        assert alone.kept_visual == [together.kept_visual[i]]
    n_visual = model.config.n_visual_tokens
    budget = pruner.budget
    if budget.keep is not None:
        assert together.kept_visual == [budget.keep * budget.group] * 4
    elif budget.alpha is None:
        assert together.kept_visual == [n_visual] * 4
    else:
        assert all(0 < k < n_visual for k in together.kept_visual)


def test_sap_budgets_follow_the_predicted_maps(inputs, target, data_config) -> None:
    from fast3d_cli.pruning.budgets import sap_keep_counts

    model, fingerprint = target
    pruner = Pruner(settings_for("gap+sap", inputs), model, fingerprint, data_config)
    samples = load_samples(data_config, "scanqa", "val")[:6]
    out = generate_answers(model, SceneBank(data_config, "val"), samples, GenerationConfig(1, 2), pruner)
    logits = pruner.maps.scores(samples).numpy()
    assert out.kept_visual == (3 * sap_keep_counts(logits, 0.3)).tolist()


def eval_args(inputs, data_config, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", str(inputs["model"]), "--data-root", str(data_config.root), "-o", str(out),
        "--tasks", TASKS, "--limit", "5", "--num-beams", "1", "--max-new-tokens", "4", "--batch-size", "3",
        *extra,
    ]  # fmt: skip


def test_eval_reports_ratios_score_ratio_and_speed(capsys, inputs, data_config, tmp_path) -> None:
    out, baseline = tmp_path / "sap", tmp_path / "dense"
    args = eval_args(inputs, data_config, out, "--method", "gap+sap", "--maps", str(inputs["pred"]))
    code, stdout, stderr = fast3d(capsys, *args, "--alpha", "0.3", "--baseline", str(baseline), "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    pruning = result["pruning"]
    assert pruning["method"] == "gap+sap" and pruning["alpha"] == 0.3 and pruning["layer"] == 0
    assert 0 < pruning["input_ratio"] < 100 and pruning["layer_averaged_ratio"] == pruning["input_ratio"]
    assert pruning["flops_ratio"] < 1 and set(pruning["per_task"]) == {"scanqa", "scanrefer"}
    assert result["score_ratio"]["baseline"] == str(baseline) and "value" in result["score_ratio"]
    assert {"ci95", "per_task_ci95", "n_resamples", "seed", "method"} <= set(result["score_ratio"])
    assert (out / "units.json").is_file() and (baseline / "units.json").is_file()
    dense = json.loads((baseline / "metrics.json").read_text())
    assert dense["pruning"]["method"] == "none" and dense["pruning"]["input_ratio"] == 0
    speed = result["speed"]
    assert speed["generated_samples"] == 10 and speed["prefill_ms_per_sample"] > 0
    assert speed["decode_ms_per_token"] is not None
    # a rerun generates nothing, keeps the measured speed and reuses the dense run
    code, stdout, _ = fast3d(capsys, *args, "--alpha", "0.3", "--baseline", str(baseline), "--json")
    again = json.loads(stdout)
    assert again["speed"] == speed and again["score_ratio"] == result["score_ratio"]
    # the layer-averaged ratio scales with (L - K) / L
    out2 = tmp_path / "fastv"
    fastv = eval_args(inputs, data_config, out2, "--method", "fastv", "--layer", "1", "--keep", "10")
    code, stdout, stderr = fast3d(capsys, *fastv, "--baseline", str(baseline), "--json", "--bootstrap", "0")
    assert code == 0, stderr
    pruning = json.loads(stdout)["pruning"]
    assert pruning["input_ratio"] == 90.0 and pruning["layer_averaged_ratio"] == 45.0
    ratio = json.loads(stdout)["score_ratio"]  # --bootstrap 0: the score ratio without an interval
    assert "value" in ratio and not {"ci95", "per_task_ci95", "n_resamples"} & set(ratio)
    assert "paired-bootstrap" not in stderr


def test_bad_options_exit_2(capsys, inputs, data_config, tmp_path) -> None:
    out = tmp_path / "bad"
    pred = str(inputs["pred"])
    cases = {
        ("--method", "gap+sap", "--maps", pred, "--alpha", "1.5"): "--alpha must be in (0, 1]",
        ("--method", "gap+sap", "--maps", pred, "--alpha", "0"): "--alpha must be in (0, 1]",
        ("--method", "random", "--ratio", "100"): "--ratio must be in [0, 100)",
        ("--method", "random", "--keep", "3", "--layer", "2"): "--layer must be in [0, 1]",
        ("--method", "fastv", "--keep", "3"): "--layer >= 1",
        ("--method", "gap", "--keep", "3"): "needs exactly one of --maps",
        ("--method", "random"): "exactly one of --keep or --ratio",
        ("--method", "random", "--ratio", "60", "--layer", "1"): "cannot be reached",
        ("--method", "gap+sap", "--maps", pred, "--alpha", "auto"): "search-alpha",
        ("--method", "magic", "--keep", "3"): "unknown --method",
        ("--method", "gap", "--keep", "3", "--maps", str(inputs["store"])): "'attention' store",
    }
    for extra, message in cases.items():
        code, stdout, stderr = fast3d(capsys, *eval_args(inputs, data_config, out, *extra))
        assert code == 2, (extra, stderr)
        assert message in stderr, (extra, stderr)
        assert stdout == "" and len(stderr.strip().splitlines()) == 1


def test_maps_of_another_model_or_incomplete_are_refused(capsys, inputs, data_config, tmp_path) -> None:
    from fast3d_cli.models.chat_scene.io import save_pretrained
    from tests.conftest import build_tiny_model

    other_model = tmp_path / "other-model"
    save_pretrained(build_tiny_model(data_config, seed=1), other_model)
    args = [
        "eval",
        "--model",
        str(other_model),
        "--data-root",
        str(data_config.root),
        "-o",
        str(tmp_path / "o"),
    ]
    args += ["--tasks", "scanqa", "--limit", "2", "--num-beams", "1", "--max-new-tokens", "2"]
    args += [
        "--method",
        "gap",
        "--keep",
        "3",
        "--maps",
        str(inputs["pred"]),
        "--baseline",
        str(tmp_path / "d"),
    ]
    code, _, stderr = fast3d(capsys, *args)
    assert code == 2 and "another model" in stderr and "--force" in stderr
    assert fast3d(capsys, *args, "--force")[0] == 0

    partial = tmp_path / "partial.zarr"
    shutil.copytree(inputs["pred"], partial)
    group = open_store(partial, read_only=False).group("scanqa", "val")
    marker = group.array("sample_index", writable=True)
    marker[:3] = np.full(3, -1)
    code, _, stderr = fast3d(
        capsys,
        *eval_args(
            inputs, data_config, tmp_path / "p", "--method", "gap", "--keep", "3", "--maps", str(partial)
        ),
    )
    assert code == 2 and "lacks maps for" in stderr and "of the 5 samples" in stderr


def test_fixed_count_gives_every_request_the_sap_mean(capsys, inputs, data_config, tmp_path) -> None:
    from fast3d_cli.pruning.budgets import sap_keep_counts

    out = tmp_path / "fixed"
    args = eval_args(inputs, data_config, out, "--method", "gap+sap", "--maps", str(inputs["pred"]))
    code, stdout, stderr = fast3d(capsys, *args, "--alpha", "0.3", "--fixed-count", "--json")
    assert code == 0, stderr
    pruning = json.loads(stdout)["pruning"]
    samples = [s for t in TASKS.split(",") for s in load_samples(data_config, t, "val")[:5]]
    maps = Pruner(settings_for("gap+sap", inputs), *_target_for(inputs), data_config).maps
    counts = sap_keep_counts(maps.scores(samples).numpy(), 0.3)
    assert pruning["fixed_count"] is True and pruning["keep"] == round(counts.mean())
    assert pruning["sap_mean_kept_objects"] == pytest.approx(counts.mean(), abs=1e-3)
    records = [json.loads(line) for line in (out / "predictions" / "scanqa.jsonl").read_text().splitlines()]
    assert {r["kept_visual_tokens"] for r in records} == {3 * round(counts.mean())}
    code, _, stderr = fast3d(capsys, *eval_args(inputs, data_config, out, "--method", "random", "--keep", "2",
                                                 "--fixed-count"))  # fmt: skip
    assert code == 2 and "--fixed-count applies to the +sap methods" in stderr


def _target_for(inputs):
    source = ModelSource(model_dir=inputs["model"])
    return source.load(device="cpu", dtype="float32"), source.fingerprint()


def test_skip_padding_never_keeps_padding_objects(inputs, target, data_config) -> None:
    model, fingerprint = target
    bank = SceneBank(data_config, "val")
    samples = load_samples(data_config, "scanqa", "val")[:4]
    real = [int((bank.object_features(s.scene_id)[0].abs().sum(-1) > 0).sum()) for s in samples]
    from dataclasses import replace

    for name in ("gap", "gap+sap", "random", "divprune", "fastv"):
        settings = settings_for(name, inputs)
        pruner = Pruner(replace(settings, skip_padding=True), model, fingerprint, data_config)
        out = generate_answers(model, bank, samples, GenerationConfig(1, 1), pruner)
        for objects, n_real in zip(out.kept_objects, real, strict=True):
            assert objects and max(objects) < n_real, (name, objects, n_real)


def test_divprune_skips_excluded_items_per_row() -> None:
    from fast3d_cli.pruning.scorers import divprune_scores

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 5, generator=gen)
    excluded = torch.zeros(2, 8, dtype=torch.bool)
    excluded[0, 3:] = True  # row 0 has 3 candidates only
    scores = divprune_scores(features, 5, excluded)
    assert torch.isfinite(scores[0]).sum() == 3 and not torch.isfinite(scores[0, 3:]).any()
    assert torch.isfinite(scores[1]).sum() == 5
    alone = divprune_scores(features[1:], 5, excluded[1:])
    assert torch.equal(alone, scores[1:])
