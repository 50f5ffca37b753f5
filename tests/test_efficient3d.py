"""efficient3d: the DVTIE predictor (DHCT network, debiased target) trained by ``train-gap --predictor
efficient3d``, its prediction store, and ``eval --method efficient3d`` with fixed and ATR budgets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fast3d_cli.cli.app import run
from fast3d_cli.data import SceneBank, load_samples
from fast3d_cli.evaluation.runner import generate_answers
from fast3d_cli.gap.configuration import GAPConfig
from fast3d_cli.gap.modeling import CMTEncoder
from fast3d_cli.gap.predictors import debiased_object_scores
from fast3d_cli.generation import GenerationConfig
from fast3d_cli.pruning.budgets import sap_keep_counts
from fast3d_cli.pruning.methods import PruningSettings
from fast3d_cli.pruning.pruner import Pruner
from fast3d_cli.stores import open_store

from .conftest import build_tiny_model, fast3d
from .test_gap_train import TINY_GAP

pytestmark = pytest.mark.usefixtures("one_thread")


def test_debiased_target_drops_the_two_shallowest_layers() -> None:
    layers = np.array([[[9.0, 9.0], [7.0, 1.0], [1.0, 2.0], [3.0, 4.0]]])  # [1 sample, 4 layers, 2 objects]
    assert debiased_object_scores(layers).tolist() == [[2.0, 3.0]]
    from fast3d_cli.errors import UserError

    with pytest.raises(UserError):
        debiased_object_scores(layers[:, :2])


def tiny_dhct_config(**extra) -> GAPConfig:
    fields = {k: v for k, v in TINY_GAP.items() if k != "text_config"}
    return GAPConfig(feat_dim_3d=4, feat_dim_2d=4, **{**fields, "num_layers": 2, "use_dhct": True, **extra})


def test_dhct_bias_matches_the_official_formula() -> None:
    torch.manual_seed(0)
    config = tiny_dhct_config(dhct_last_n_layers=1, dropout=0.0)
    cmt = CMTEncoder(config).eval()
    first, last = cmt.layers
    assert (first.dhct_enabled, last.dhct_enabled) == (False, True)
    with torch.no_grad():
        last.dhct_head_gate.copy_(torch.tensor([6.0, 3.0]))  # sigmoid(0), sigmoid(-3)
    x, txt = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    padding = torch.tensor([[False, False, False, True], [False, False, False, False]])
    got = last.cross_attention(x, txt, padding)

    dhct = last.cross_dhct
    m = torch.sigmoid(dhct.proj_q(x) @ dhct.proj_k(txt).transpose(1, 2) / (64**0.5 * 1.2))
    m = m.masked_fill(padding[:, None, :], 0.0)
    gate = torch.sigmoid(torch.tensor([0.0, -3.0]))
    bias = 0.07 * (m - 0.5)[:, None] * gate[None, :, None, None]  # [B, H, Lq, Lk]
    bias = bias.masked_fill(padding[:, None, None, :], float("-inf"))
    attn = last.multihead_attn
    expected = attn(x, txt, txt, attn_mask=bias.reshape(4, 5, 4), need_weights=False)[0]
    torch.testing.assert_close(got, expected)
    plain = attn(x, txt, txt, key_padding_mask=padding, need_weights=False)[0]
    assert not torch.allclose(got, plain)


def test_dhct_projections_get_no_gradient_as_official() -> None:
    torch.manual_seed(0)
    cmt = CMTEncoder(tiny_dhct_config())
    layer = cmt.layers[-1]
    out = layer.cross_attention(
        torch.randn(1, 3, 32), torch.randn(1, 2, 32), torch.zeros(1, 2, dtype=torch.bool)
    )
    out.sum().backward()
    assert layer.dhct_head_gate.grad is not None and layer.dhct_head_gate.grad.abs().sum() > 0
    assert layer.cross_dhct.proj_q.weight.grad is None


def test_gap_without_dhct_keeps_the_official_parameter_names() -> None:
    plain = CMTEncoder(tiny_dhct_config(use_dhct=False)).state_dict()
    dhct = CMTEncoder(tiny_dhct_config()).state_dict()
    assert not any("dhct" in k for k in plain)
    assert set(dhct) - set(plain) == {
        f"layers.{i}.{name}"
        for i in range(2)
        for name in (
            "dhct_head_gate",
            *(f"cross_dhct.proj_{p}.{w}" for p in "qk" for w in ("weight", "bias")),
        )
    }


# --- the pipeline: extract --keep-layers -> train-gap --predictor efficient3d -> predict -> eval ------------


@pytest.fixture(scope="module")
def pipeline(data_config, tmp_path_factory) -> dict[str, Path]:
    from fast3d_cli.models.chat_scene.io import save_pretrained

    root = tmp_path_factory.mktemp("efficient3d")
    save_pretrained(build_tiny_model(data_config, seed=1, layers=3), root / "model")
    common = ["--data-root", str(data_config.root), "--tasks", "scanqa"]
    store, gap, pred = root / "maps.zarr", root / "e3d", root / "pred.zarr"
    extract = ["extract", "--model", str(root / "model"), "-o", str(store), "--split", "train,val"]
    assert run([*extract, *common, "--keep-layers", "--batch-size", "16"]) == 0
    (root / "tiny.json").write_text(json.dumps(TINY_GAP))
    train = ["train-gap", str(store), "-o", str(gap), "--predictor", "efficient3d", "--epochs", "1"]
    train += ["--tokenizer", str(root / "model"), "--gap-config", str(root / "tiny.json"), "-b", "8"]
    assert run([*train, *common]) == 0
    assert run(["predict", str(gap), "-o", str(pred), "--split", "val", *common]) == 0
    return {"root": root, "model": root / "model", "store": store, "gap": gap, "pred": pred}


def test_train_gap_efficient3d_stores_a_dhct_network_on_the_debiased_target(pipeline) -> None:
    config = json.loads((pipeline["gap"] / "config.json").read_text())
    assert config["use_dhct"] is True
    training = json.loads((pipeline["gap"] / "training.json").read_text())
    assert "debiased_object_scores" in json.dumps(training)
    from safetensors.torch import load_file

    weights = load_file(pipeline["gap"] / "model.safetensors")
    assert any("dhct_head_gate" in k for k in weights)


def test_train_gap_efficient3d_needs_per_layer_maps(capsys, data_config, tmp_path) -> None:
    store = tmp_path / "plain.zarr"
    model = tmp_path / "model"
    from fast3d_cli.models.chat_scene.io import save_pretrained

    save_pretrained(build_tiny_model(data_config, seed=1, layers=3), model)
    common = ["--data-root", str(data_config.root), "--tasks", "scanqa", "--limit", "4"]
    assert run(["extract", "--model", str(model), "-o", str(store), "--split", "train", *common]) == 0
    code, _, err = fast3d(
        capsys, "train-gap", str(store), "-o", str(tmp_path / "g"), "--predictor", "efficient3d",
        "--tokenizer", str(model), *common,
    )  # fmt: skip
    assert code == 2 and "--keep-layers" in err
    code, _, err = fast3d(capsys, "train-gap", str(store), "--predictor", "nope", *common)
    assert code == 2 and "--predictor" in err


@pytest.fixture(scope="module")
def target(pipeline):
    from fast3d_cli.models.loading import ModelSource

    source = ModelSource(model_dir=pipeline["model"])
    return source.load(device="cpu", dtype="float32"), source.fingerprint()


@pytest.mark.parametrize("budget", [{"keep": 6}, {"ratio": 80.0}, {"alpha": 0.3}])
def test_eval_efficient3d_batch_equals_rows_and_budget_is_honoured(budget, pipeline, target, data_config):
    model, fingerprint = target
    settings = PruningSettings(method="efficient3d", maps=pipeline["pred"], **budget)
    pruner = Pruner(settings, model, fingerprint, data_config)
    samples = load_samples(data_config, "scanqa", "val")[:4]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=2, max_new_tokens=4)
    together = generate_answers(model, bank, samples, config, pruner)
    if "alpha" in budget:  # ATR: the fewest objects whose softmax mass of the predicted logits reaches alpha
        logits = pruner.maps.scores(samples).numpy()
        assert together.kept_visual == (3 * sap_keep_counts(logits, 0.3)).tolist()
    else:
        assert together.kept_visual == [3 * pruner.budget.keep] * 4
    for i, sample in enumerate(samples):
        alone = generate_answers(model, bank, [sample], config, pruner)
        assert alone.texts == [together.texts[i]] and alone.kept_objects == [together.kept_objects[i]]


def test_eval_efficient3d_keep_all_equals_dense(pipeline, target, data_config) -> None:
    model, fingerprint = target
    samples = load_samples(data_config, "scanqa", "val")[:3]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=1, max_new_tokens=6)
    dense = generate_answers(
        model, bank, samples, config, Pruner(PruningSettings(), model, fingerprint, data_config)
    )
    keep_all = PruningSettings(method="efficient3d", maps=pipeline["pred"], keep=model.config.max_obj_num)
    pruned = generate_answers(model, bank, samples, config, Pruner(keep_all, model, fingerprint, data_config))
    assert pruned.texts == dense.texts


def test_eval_cli_efficient3d_with_atr(capsys, pipeline, data_config, tmp_path) -> None:
    args = [
        "eval",
        "--model",
        str(pipeline["model"]),
        "--data-root",
        str(data_config.root),
        "--tasks",
        "scanqa",
    ]
    args += ["--limit", "3", "--num-beams", "1", "--method", "efficient3d", "--maps", str(pipeline["pred"])]
    code, out, err = fast3d(capsys, *args, "--alpha", "0.3", "-o", str(tmp_path / "run"))
    assert code == 0, err
    metrics = json.loads(Path(out.strip()).read_text())
    assert metrics["pruning"]["method"] == "efficient3d" and metrics["pruning"]["alpha"] == 0.3
    code, _, err = fast3d(capsys, *args, "--alpha", "0.3", "--keep", "4", "-o", str(tmp_path / "bad"))
    assert code == 2 and "--keep, --ratio or --alpha" in err
    assert open_store(pipeline["pred"]).kind == "prediction"
