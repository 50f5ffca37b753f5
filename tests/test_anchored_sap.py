"""Budget rules (fast3d_cli.pruning.budget_rules) and our method, anchored SAP (--method gap+asap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast3d_cli.data import SceneBank, load_samples
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.runner import generate_answers
from fast3d_cli.generation import GenerationConfig
from fast3d_cli.pruning import anchored
from fast3d_cli.pruning.budget_rules import (
    RuleInputs,
    anchored_rule,
    fixed_rule,
    floored_counts,
    prompt_anchors,
    sap_floor_rule,
    sap_rule,
)
from fast3d_cli.pruning.budgets import sap_keep_counts
from fast3d_cli.pruning.methods import PruningSettings, validate
from fast3d_cli.pruning.pruner import Pruner
from tests.test_pruning_eval import inputs, target  # noqa: F401  (module fixtures: tiny model, GAP, maps)

# Six objects on a line; object 5 is padding in row 0. Row 0 names <OBJ004>, whose nearest non-padding
# proposal is object 2 (object 5 is nearer but excluded).
SCORES = np.array([[5.0, 4, 3, 2, 1, 0], [0, 0, 0, 0, 0, 9]], np.float32)
CENTRES = np.array([[[0, 0, 0], [1, 0, 0], [5, 0, 0], [0.5, 0, 0], [9, 0, 0], [8.5, 0, 0]]] * 2, float)
EXCLUDED = np.array([[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], bool)
HAND = RuleInputs(SCORES, ["Describe <OBJ004> in detail.", "What is here?"], CENTRES, EXCLUDED)


def kept(mask: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(row).tolist() for row in mask]


def test_hand_checked_rules() -> None:
    # softmax of row 0 without object 5: 0.636, 0.234, 0.086, ... -> alpha 0.5 needs 1 object, 0.9 needs 3
    assert kept(sap_rule(HAND, 0.5)) == [[0], [5]]
    assert kept(sap_rule(HAND, 0.9)) == [[0, 1, 2], [5]]
    assert kept(fixed_rule(HAND, 2)) == [[0, 1], [0, 5]]
    assert kept(sap_floor_rule(HAND, 0.5, floor=3)) == [[0, 1, 2], [0, 1, 5]]
    # anchored: budget 3 = named <OBJ004>, its nearest candidate 2 (not padding 5), then the best score 0
    assert kept(anchored_rule(HAND, 0.5, floor=3, neighbours=1)) == [[0, 2, 4], [0, 1, 5]]
    # a budget of 1 still holds the named object (it grows to the named count, here 1)
    assert kept(anchored_rule(HAND, 0.5, floor=0, neighbours=1)) == [[4], [5]]


def test_prompt_anchors() -> None:
    assert prompt_anchors("Is <OBJ012> left of <OBJ003>? <OBJ012>", 100) == [12, 3]
    assert prompt_anchors("<OBJ120> and <OBJ007>", 100) == [7]
    assert prompt_anchors("no object", 100) == []


def random_inputs(seed: int, batch: int = 12, m: int = 30) -> RuleInputs:
    rng = np.random.default_rng(seed)
    prompts = [f"Describe <OBJ{int(j):03}>." if j % 2 else "A question?" for j in rng.integers(0, m, batch)]
    excluded = rng.random((batch, m)) < 0.3
    return RuleInputs(
        rng.normal(size=(batch, m)).astype(np.float32) * 3, prompts, rng.random((batch, m, 3)), excluded
    )


@pytest.mark.parametrize("seed", range(5))
def test_budget_honoured_and_rows_independent(seed: int) -> None:
    data = random_inputs(seed)
    for alpha, floor, cap in ((0.3, 0, None), (0.6, 4, None), (0.9, 5, 8), (0.99, 2, 3)):
        counts = floored_counts(data, alpha, floor, cap)
        assert (counts >= min(floor, data.shape[1])).all() and (cap is None or (counts <= cap).all())
        mask = anchored_rule(data, alpha, floor, cap, neighbours=2)
        named = [len(prompt_anchors(p, data.shape[1])) for p in data.prompts]
        assert mask.sum(1).tolist() == np.maximum(counts, named).tolist()
        assert sap_floor_rule(data, alpha, floor, cap).sum(1).tolist() == counts.tolist()
        for row in range(data.shape[0]):  # a batch of N == N batches of one
            alone = RuleInputs(data.scores[row : row + 1], data.prompts[row : row + 1],
                               data.centres[row : row + 1], data.excluded[row : row + 1])  # fmt: skip
            assert (anchored_rule(alone, alpha, floor, cap, 2)[0] == mask[row]).all()
            for anchor in prompt_anchors(data.prompts[row], data.shape[1]):
                assert mask[row, anchor]
    plain = sap_rule(RuleInputs(data.scores), 0.7).sum(1)
    assert plain.tolist() == sap_keep_counts(data.scores, 0.7).tolist()


def test_calibrated_alpha_reaches_the_target_ratio() -> None:
    data = {t: random_inputs(s, batch=40, m=100).scores for s, t in enumerate(("a", "b"))}
    alpha = anchored.calibrate_alpha(data, {}, 90.0)
    means = [floored_counts(RuleInputs(s), alpha, anchored.FLOOR, anchored.CAP).mean() for s in data.values()]
    assert abs(np.mean(means) - 10.0) < 1.0


def test_method_registered_and_validated() -> None:
    validate(PruningSettings(method="gap+asap", alpha=0.5, maps="pred.zarr"), 4)
    validate(PruningSettings(method="gap+asap", alpha="auto", maps="pred.zarr"), 4)
    for bad in (
        PruningSettings(method="gap+asap", maps="pred.zarr"),
        PruningSettings(method="gap+asap", alpha=0.5, maps="pred.zarr", skip_padding=True),
        PruningSettings(method="gap+asap", alpha=0.5, maps="pred.zarr", fixed_count=True),
        PruningSettings(method="gap+asap", alpha=0.5),
    ):
        with pytest.raises(UserError):
            validate(bad, 4)


def test_gap_asap_in_the_evaluation(inputs, target, data_config) -> None:  # noqa: F811
    """Through the Pruner and the engine: the kept objects are the rule's, batch == rows alone."""
    model, fingerprint = target
    torch.set_num_threads(1)
    settings = PruningSettings(method="gap+asap", alpha=0.3, maps=inputs["pred"])
    pruner = Pruner(settings, model, fingerprint, data_config)
    bank = SceneBank(data_config, "val")
    samples = load_samples(data_config, "scanqa", "val")[:4]
    config = GenerationConfig(num_beams=2, max_new_tokens=4)
    together = generate_answers(model, bank, samples, config, pruner)
    expected = anchored.kept_mask(pruner.maps.scores(samples).numpy(), samples, bank, 0.3)
    assert together.kept_visual == (3 * expected.sum(1)).tolist()
    assert [sorted(k) for k in together.kept_objects] == kept(expected)
    for i, sample in enumerate(samples):
        alone = generate_answers(model, bank, [sample], config, pruner)
        assert alone.texts == [together.texts[i]] and alone.kept_visual == [together.kept_visual[i]]


def test_alpha_auto_reaches_the_ratio_search_alpha_targeted(capsys, inputs, target, data_config, tmp_path):  # noqa: F811
    """--alpha auto: refused (exit 2, one line) before search-alpha ran; after it, the calibrated alpha
    gives the recorded target ratio over the store's samples (floored budgets, padding carrying no mass)."""
    import shutil

    from fast3d_cli.cli.app import run
    from fast3d_cli.pruning.scorers import StoreMaps
    from fast3d_cli.stores import open_store
    from tests.test_pruning_eval import eval_args, fast3d

    pred = tmp_path / "pred.zarr"
    shutil.copytree(inputs["pred"], pred)
    code, _, stderr = fast3d(capsys, *eval_args(inputs, data_config, tmp_path / "o", "--method", "gap+asap",
                                                 "--maps", str(pred), "--alpha", "auto"))  # fmt: skip
    assert code == 2 and "search-alpha" in stderr and len(stderr.strip().splitlines()) == 1
    assert run(["search-alpha", str(pred), "--target", "60", "--data-root", str(data_config.root)]) == 0
    model, fingerprint = target
    pruner = Pruner(
        PruningSettings(method="gap+asap", alpha="auto", maps=pred), model, fingerprint, data_config
    )
    recorded = open_store(pred).attrs["sap"]
    maps = StoreMaps(pred, ("prediction",), fingerprint, lambda store: [])
    bank = SceneBank(data_config, recorded["split"])
    rows = {}
    for task in recorded["tasks"]:
        samples = [s for s in load_samples(data_config, task, "val") if s.index in maps.rows(task, "val")]
        rows[task] = anchored.rule_inputs(maps.scores(samples).numpy(), samples, bank)

    def distance(alpha: float) -> float:  # |mean kept - kept at the target ratio|, tasks weighted equally
        means = [floored_counts(r, alpha, anchored.FLOOR, anchored.CAP).mean() for r in rows.values()]
        return abs(float(np.mean(means)) - model.config.max_obj_num * (1 - 60 / 100))

    # a tiny GAP's budgets move in steps: the calibrated alpha is the closest step, none on a fine grid closer
    assert distance(pruner.budget.alpha) <= min(distance(a) for a in np.linspace(1e-4, 1, 500)) + 1e-9


def test_compare_matches_the_anchored_alpha_as_alpha_auto_does(inputs, target, data_config, tmp_path):  # noqa: F811
    """`fast3d compare` matches gap+asap with its own calibration (floored budgets, padding last) on the
    compared samples: the same alpha `--alpha auto` finds after search-alpha on those samples, not SAP's."""
    import shutil

    from fast3d_cli.cli.app import run
    from fast3d_cli.evaluation.matching import MatchInputs, match_sap_alpha

    pred = tmp_path / "pred.zarr"
    shutil.copytree(inputs["pred"], pred)
    tasks = ("scanrefer",)
    matched, note = match_sap_alpha(
        PruningSettings(method="gap+asap", maps=pred), 60.0, MatchInputs(tasks=tasks, data=data_config)
    )
    sap, _ = match_sap_alpha(PruningSettings(method="gap+sap", maps=pred), 60.0, MatchInputs(tasks=tasks))
    assert "anchored" in note and matched != sap
    assert run(["search-alpha", str(pred), "--target", "60", "--tasks", "scanrefer",
                "--data-root", str(data_config.root)]) == 0  # fmt: skip
    model, fingerprint = target
    pruner = Pruner(
        PruningSettings(method="gap+asap", alpha="auto", maps=pred), model, fingerprint, data_config
    )
    assert pruner.budget.alpha == pytest.approx(matched)
