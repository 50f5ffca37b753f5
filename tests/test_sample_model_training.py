"""The sample-model training recipe: a short run is reproducible and logs its learning probes."""

from __future__ import annotations

import json

import torch

from fast3d_cli.sample_model.train import TrainSpec, train_sample_model


def test_training_is_reproducible(data_config, tmp_path) -> None:
    spec = TrainSpec(
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        batch_size=4,
        steps=3,
        log_every=1,
        eval_every=2,
        eval_samples=4,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = train_sample_model(tmp_path / "a", data_config, spec)
        second = train_sample_model(tmp_path / "b", data_config, spec)
    finally:
        torch.set_num_threads(threads)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    log = json.loads((first / "training.json").read_text())["log"]
    assert [e["step"] for e in log] == [0, 1, 2] and "val_accuracy" in log[-1]
