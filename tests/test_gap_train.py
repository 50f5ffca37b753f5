"""``fast3d train-gap``: learning, exact resume after SIGKILL, 2 processes, refusals (exit 2).

A small attention store is extracted with the tiny random Chat-Scene model; the GAP network is tiny too
(hidden 32, one CMT layer, a one-layer text encoder), so every run takes a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fast3d_cli.cli.app import run
from fast3d_cli.models.chat_scene.io import save_pretrained
from fast3d_cli.stores import create_store, open_store

from .conftest import fast3d, one_error_line

TINY_GAP = {
    "hidden_size": 32,
    "num_attention_heads": 2,
    "num_layers": 1,
    "dim_feedforward": 64,
    "text_config": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
}
STORE_TASKS = "scanqa,scanrefer,sqa3d"
_CACHE: dict[str, Path] = {}


def build_gap_inputs(tiny_model, data_config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny target model directory, an attention store (3 tasks, train + val) and a tiny GAP config
    (built once per session, also for test_gap_predict)."""
    if "store" not in _CACHE:
        root = tmp_path_factory.mktemp("gap_inputs")
        save_pretrained(tiny_model, root / "model")
        store = root / "maps.zarr"
        args = [
            "extract",
            "--model",
            str(root / "model"),
            "--data-root",
            str(data_config.root),
            "-o",
            str(store),
        ]
        args += ["--tasks", STORE_TASKS, "--split", "train,val", "--chunk-size", "16", "--batch-size", "16"]
        assert run(args) == 0
        (root / "tiny.json").write_text(json.dumps(TINY_GAP))
        _CACHE.update(root=root, model=root / "model", store=store, gap_config=root / "tiny.json")
    return dict(_CACHE)


def train_args(inputs: dict[str, Path], data_config, out: Path, *extra: str) -> list[str]:
    return [
        "train-gap",
        str(inputs["store"]),
        "-o",
        str(out),
        "--data-root",
        str(data_config.root),
        "--tokenizer",
        str(inputs["model"]),
        "--gap-config",
        str(inputs["gap_config"]),
        "--batch-size",
        "8",
        "--lr",
        "2e-3",
        *extra,
    ]


def build_trained_gap(gap_inputs: dict[str, Path], data_config) -> Path:
    """A tiny GAP network trained for 3 epochs on the store (built once per session)."""
    if "gap" not in _CACHE:
        out = gap_inputs["root"] / "gap"
        assert run(train_args(gap_inputs, data_config, out, "--epochs", "3")) == 0
        _CACHE["gap"] = out
    return _CACHE["gap"]


@pytest.fixture(scope="session")
def gap_inputs(tiny_model, data_config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_gap_inputs(tiny_model, data_config, tmp_path_factory)


@pytest.fixture(scope="session")
def trained_gap(gap_inputs, data_config) -> Path:
    return build_trained_gap(gap_inputs, data_config)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_kl_and_records_provenance(capsys, gap_inputs, data_config, trained_gap) -> None:
    from fast3d_cli.gap import load_gap

    out = trained_gap
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= {
        p.name for p in out.iterdir()
    }
    lines = read_metrics(out)
    assert [line["epoch"] for line in lines] == [0, 1, 2, 3]
    first, last = lines[0]["holdout"]["all"]["kd_loss"], lines[-1]["holdout"]["all"]["kd_loss"]
    assert last < 0.5 * first, (first, last)
    assert lines[-1]["val"]["all"]["kd_loss"] < lines[0]["val"]["all"]["kd_loss"]
    for name in ("holdout", "val"):
        assert set(lines[-1][name]) == {"scanqa", "scanrefer", "sqa3d", "all"}
        metrics = lines[-1][name]["scanqa"]
        for k in (5, 10, 20):
            assert 0 <= metrics[f"topk_{k}_f1_score"] <= 1 and 0 <= metrics[f"topk_{k}_mass"] <= 1
        assert 0 <= lines[-1][name]["all"]["evidence_top10"] <= 1  # the sample world's rows have evidence
    record = json.loads((out / "training.json").read_text())
    store = open_store(gap_inputs["store"])
    assert (
        record["complete"]
        and record["model"] == store.attrs["model"]
        and record["data"] == store.attrs["data"]
    )
    assert record["stores"][0]["path"] == str(gap_inputs["store"].resolve())
    assert record["stores"][0]["groups"] == [
        f"{t}/{s}" for t in ("scanqa", "scanrefer", "sqa3d") for s in ("train", "val")
    ]
    assert record["selection"] == {"set": "holdout", "metric": "kd_loss"}
    best = min(lines[1:], key=lambda line: line["holdout"]["all"]["kd_loss"])
    assert record["best"]["epoch"] == best["epoch"]
    assert record["samples"]["holdout"] + record["samples"]["train"] == 3 * 40
    assert record["text_encoder"]["init"] == "scratch" and record["text_encoder"]["how"] == "--tokenizer"
    assert record["text_encoder"]["is_store_model"] is True
    model, tokenizer = load_gap(out)
    assert model.config.hidden_size == 32 and model.config.num_layers == 1
    assert tokenizer.pad_token_id is not None

    # a rerun of the finished command does nothing and prints the path; other settings are refused
    code, stdout, _ = fast3d(capsys, *train_args(gap_inputs, data_config, out, "--epochs", "3", "--json"))
    assert code == 0 and json.loads(stdout)["trained_steps"] == 0
    code, stdout, _ = fast3d(capsys, *train_args(gap_inputs, data_config, out, "--epochs", "3"))
    assert code == 0 and stdout == f"{out}\n"
    code, stdout, stderr = fast3d(capsys, *train_args(gap_inputs, data_config, out, "--epochs", "4"))
    assert code == 2 and "another settings.epochs (3 recorded, 4 now)" in stderr and one_error_line(stderr)


def test_select_on_val_when_asked(capsys, gap_inputs, data_config, tmp_path) -> None:
    out = tmp_path / "gap"
    args = train_args(
        gap_inputs, data_config, out, "--epochs", "1", "--select-on", "val", "--tasks", "scanqa"
    )
    code, stdout, stderr = fast3d(capsys, *args, "--json")
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["selection"]["set"] == "val" and "holdout" not in record["samples"]
    assert record["samples"] == {"train": 40, "val": 12} and record["tasks"] == ["scanqa"]
    assert set(read_metrics(out)[1]) >= {"val", "train_loss", "selection"}


def test_pretrained_text_encoder_folder(capsys, gap_inputs, data_config, tmp_path) -> None:
    from transformers import RobertaConfig, RobertaModel

    from fast3d_cli.gap import load_gap
    from fast3d_cli.gap.sample import load_sample_tokenizer

    tokenizer = load_sample_tokenizer(gap_inputs["model"])
    roberta = tmp_path / "roberta"  # a local RoBERTa folder (weights + tokenizer), as roberta-base would be
    text = {**TINY_GAP["text_config"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(1)
    RobertaModel(RobertaConfig(**text, max_position_embeddings=80)).save_pretrained(str(roberta))
    tokenizer.save_pretrained(str(roberta))
    config = tmp_path / "cmt.json"  # the official CMT size is too big for a test: shrink it, keep the encoder
    config.write_text(json.dumps({k: v for k, v in TINY_GAP.items() if k != "text_config"}))
    out = tmp_path / "gap"
    args = train_args(gap_inputs, data_config, out, "--epochs", "1", "--tasks", "scanqa", "--json")
    args = [a for a in args if a not in ("--tokenizer", str(gap_inputs["model"]))]
    args = [str(config) if a == str(gap_inputs["gap_config"]) else a for a in args]
    code, stdout, stderr = fast3d(capsys, *args, "--text-encoder", str(roberta))
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["text_encoder"]["init"] == "pretrained" and record["text_lr"] == pytest.approx(2e-4)
    assert record["gap_config"]["text_config"]["max_position_embeddings"] == 80
    model, _ = load_gap(out)
    start = RobertaModel.from_pretrained(str(roberta)).state_dict()
    trained = {
        k.removeprefix("text_encoder."): v for k, v in model.state_dict().items() if k.startswith("text_")
    }
    assert torch.equal(trained["pooler.dense.weight"], start["pooler.dense.weight"])  # unused: frozen
    moved = trained["embeddings.word_embeddings.weight"] - start["embeddings.word_embeddings.weight"]
    assert 0 < moved.abs().max() < 0.05  # fine-tuned from the folder's weights at the text lr


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_sigkill_then_rerun_equals_uninterrupted(capsys, gap_inputs, data_config, tmp_path) -> None:
    extra = ("--epochs", "4", "--checkpoint-every", "3", "--seed", "3")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the OMP_NUM_THREADS=1 subprocess
    try:
        reference = tmp_path / "reference"
        assert fast3d(capsys, *train_args(gap_inputs, data_config, reference, *extra))[0] == 0

        out = tmp_path / "killed"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "fast3d_cli", *train_args(gap_inputs, data_config, out, *extra)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if list((out / "checkpoints").glob("step-*/training_state.json")):  # a complete checkpoint
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not json.loads((out / "training.json").read_text())["complete"], "the kill should land midway"

        code, stdout, stderr = fast3d(capsys, *train_args(gap_inputs, data_config, out, *extra, "--json"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["resumed_from_step"] > 0 and result["trained_steps"] < result["total_steps"]
    for name in ("model.safetensors",):
        left, right = _weights(reference / name), _weights(out / name)
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left), "best weights differ"
    last = [next((d / "checkpoints").glob("step-*")) for d in (reference, out)]  # accelerate's save_state
    steps = [json.loads((d / "training_state.json").read_text())["step"] for d in last]
    assert steps[0] == steps[1] == result["total_steps"]
    left, right = (_weights(d / "model.safetensors") for d in last)
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
    assert (reference / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()


def test_two_processes_train_one_model(gap_inputs, data_config, tmp_path) -> None:
    out = tmp_path / "gap2"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fast3d_cli"]
    args = train_args(gap_inputs, data_config, out, "--epochs", "2", "--batch-size", "4", "--json")
    result = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)  # one JSON document: only rank 0 prints
    assert record["processes"] == 2 and record["complete"]
    assert record["steps_per_epoch"] == record["samples"]["train"] // 8
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    (checkpoint,) = (out / "checkpoints").glob("step-*")  # accelerate's save_state: every rank's RNG states
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert [line["epoch"] for line in read_metrics(out)] == [0, 1, 2]
    assert read_metrics(out)[-1]["holdout"]["all"]["n"] == record["samples"]["holdout"]


def test_refusals_exit_2(capsys, gap_inputs, data_config, tmp_path) -> None:
    def refused(*args: str) -> str:
        code, stdout, stderr = fast3d(capsys, *args)
        assert code == 2 and stdout == "" and one_error_line(stderr), stderr
        return stderr

    out = tmp_path / "gap"
    base = train_args(gap_inputs, data_config, out, "--epochs", "1")
    assert "lack scan2cap/train, multi3dref/train" in refused(*base, "--tasks", "scanqa,scan2cap,multi3dref")
    err = refused(*base, "--tasks", "scanqa", "--select-on", "val", "--no-val")
    assert "--select-on val needs the val evaluation" in err

    prediction = tmp_path / "pred.zarr"
    create_store(
        prediction, {"kind": "prediction", "n_objects": 100, "n_visual": 300, "n_layers": 0, "chunk_size": 4}
    )
    assert "is a 'prediction' store" in refused(
        *[prediction.as_posix() if a == str(gap_inputs["store"]) else a for a in base]
    )

    # object counts: the store's against the data, the GAP config's against the store
    odd = tmp_path / "odd.zarr"
    shutil.copytree(gap_inputs["store"], odd)
    open_store(odd, read_only=False).update_attrs(n_objects=50)
    err = refused(*[odd.as_posix() if a == str(gap_inputs["store"]) else a for a in base])
    assert "maps over 50 objects but the data has 100" in err
    config = tmp_path / "fifty.json"
    config.write_text(json.dumps({**TINY_GAP, "max_obj_num": 50}))
    err = refused(*[config.as_posix() if a == str(gap_inputs["gap_config"]) else a for a in base])
    assert "max_obj_num 50" in err and "100 objects" in err

    plain = tmp_path / "results"
    plain.mkdir()
    (plain / "keep.txt").write_text("precious")
    err = refused(*[plain.as_posix() if a == str(out) else a for a in base])
    assert "not a GAP training directory" in err and (plain / "keep.txt").read_text() == "precious"
    assert "unknown GAP config field(s): hidden" in refused(
        *[
            a if a != str(gap_inputs["gap_config"]) else _write(tmp_path / "bad.json", {"hidden": 3})
            for a in base
        ]
    )


def _write(path: Path, payload: dict) -> str:
    path.write_text(json.dumps(payload))
    return str(path)


def test_limit_trains_on_the_first_samples(capsys, gap_inputs, data_config, tmp_path) -> None:
    out = tmp_path / "gap"
    args = train_args(gap_inputs, data_config, out, "--tasks", "scanqa", "--limit", "10", "--epochs", "1")
    code, stdout, stderr = fast3d(capsys, *args, "--batch-size", "4", "--holdout", "0.3", "--json")
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["samples"]["train"] + record["samples"]["holdout"] == 10
    assert record["samples"]["val"] == 10 and record["identity"]["settings"]["limit"] == 10


def test_init_from_target_starts_from_the_target_model(capsys, gap_inputs, data_config, tmp_path) -> None:
    from fast3d_cli.data import SceneBank
    from fast3d_cli.gap.configuration import GAPConfig
    from fast3d_cli.gap.modeling import GAPModel
    from fast3d_cli.gap.sources import apply_overrides
    from fast3d_cli.gap.target_init import init_from_target
    from fast3d_cli.models.loading import ModelSource

    out = tmp_path / "gap"
    args = train_args(gap_inputs, data_config, out, "--epochs", "1", "--init-from-target")
    code, _, stderr = fast3d(capsys, *args)
    assert code == 0, stderr
    record = json.loads((out / "training.json").read_text())
    assert record["settings"]["init_from_target"] and record["text_encoder"]["init"] == "target"
    done = record["text_encoder"]["init_from_target"]
    target = ModelSource(model_dir=gap_inputs["model"]).load(device="cpu", dtype="float32")
    assert done["word_embeddings"] == target.llm.get_input_embeddings().weight.shape[0]
    assert done["objects_fitted"] > 100 and 0.0 < done["object_projector_r2"] <= 1.0

    # the library call: word embeddings copied, the projector a least-squares fit of the target's tokens
    base = GAPConfig(feat_dim_3d=64, feat_dim_2d=64, text_config={"vocab_size": 10_000})
    config = apply_overrides(base, json.loads(gap_inputs["gap_config"].read_text()))
    gap = GAPModel(config)
    bank = SceneBank(data_config, "train")
    init_from_target(gap, target, bank)
    words = target.llm.get_input_embeddings().weight
    assert torch.equal(gap.text_encoder.embeddings.word_embeddings.weight[: len(words)], words.float())

    # refused in one line: a GAP narrower or wider than the target, or with a pretrained text encoder
    tiny = json.loads(gap_inputs["gap_config"].read_text())
    wide = _write(tmp_path / "wide.json", {**tiny, "hidden_size": 48})
    args = train_args(gap_inputs, data_config, tmp_path / "g2", "--epochs", "1", "--init-from-target")
    code, _, stderr = fast3d(capsys, *[wide if a == str(gap_inputs["gap_config"]) else a for a in args])
    assert code == 2 and one_error_line(stderr) and "as wide as the target model (32)" in stderr, stderr


def test_evidence_top10_counts_samples_whose_evidence_is_all_in_the_top_10() -> None:
    import numpy as np

    from fast3d_cli.data import Sample
    from fast3d_cli.gap.evaluation import evidence_hits

    scores = np.tile(np.arange(100, 0, -1, dtype=np.float32), (4, 1))  # object j ranks j-th
    samples = [
        Sample(task="scanrefer", split="train", index=i, scene_id="s", obj_id=0, prompt="p", caption="c",
               evidence=evidence)
        for i, evidence in enumerate([(0, 9), (3, 10), (), None])
    ]  # fmt: skip
    hits = evidence_hits(scores, samples)
    assert hits[:2].tolist() == [1.0, 0.0] and np.isnan(hits[2:]).all()
