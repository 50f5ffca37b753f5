"""The sample-model recipe: reproducible, resumable after kill -9, refuses what it should."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fast3d_cli.data import DataConfig
from fast3d_cli.errors import UserError
from fast3d_cli.sample_model.preflight import load_world_spec, prepare_output
from fast3d_cli.sample_model.recipe import LossWeights, Stage, TrainSpec
from fast3d_cli.sample_model.train import train_sample_model

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = LossWeights(readout=1.0, answer_grounding=1.0, focus=1.0)
TINY = TrainSpec(
    hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, batch_size=4, scenes_per_batch=2,
    stages=(Stage("tiny", 2, 2, 3, 4, ALL), Stage("full", 2, 8, 40, -1, ALL)),
    log_every=1, probe_every=2, probe_samples=2, checkpoint_every=1, warmup_steps=1,
)  # fmt: skip


def _weights(out: Path) -> bytes:
    return (out / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(data_config: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the tiny recipe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_sample_model(tmp_path_factory.mktemp("reference") / "model", data_config, TINY)
    finally:
        torch.set_num_threads(threads)


def test_training_is_reproducible_and_logs_its_probes(
    data_config: DataConfig, reference: Path, tmp_path: Path
) -> None:
    first = reference
    second = train_sample_model(tmp_path / "b", data_config, TINY)
    assert _weights(first) == _weights(second)
    log = json.loads((first / "training.json").read_text())["log"]
    assert [e["step"] for e in log] == [0, 1, 2, 3]
    assert {"lm", "binding", "gather", "grounding", "readout", "answer_grounding", "focus"} <= set(log[-1])
    assert set(log[-1]["probe"]) == {"scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d"}
    assert not (first / "checkpoint").exists()
    # training flushes denormals for speed and restores IEEE subnormals afterwards (hypothesis needs them)
    assert (torch.tensor(1e-40) * 1.0).item() != 0.0


def test_kill_9_then_rerun_resumes_to_the_same_weights(
    data_config: DataConfig, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    script = (
        "import json, sys, torch; from pathlib import Path; torch.set_num_threads(1)\n"
        "from fast3d_cli.data import DataConfig\n"
        "from fast3d_cli.sample_model.recipe import TrainSpec\n"
        "from fast3d_cli.sample_model.train import train_sample_model\n"
        "spec = TrainSpec.from_dict(json.loads(sys.argv[3]))\n"
        "train_sample_model(Path(sys.argv[1]), DataConfig(root=Path(sys.argv[2])), spec)\n"
    )
    cmd = [sys.executable, "-c", script, str(out), str(data_config.root), json.dumps(TINY.to_dict())]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and proc.poll() is None
        and not (state.is_file() and json.loads(state.read_text())["step"] >= 2)
    ):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.is_file() and not (out / "model.safetensors").exists(), "the kill must land midway"
    phases: list[str] = []
    train_sample_model(out, data_config, TINY, phase=phases.append)
    assert any(p.startswith("resuming from step") for p in phases)
    assert _weights(out) == _weights(reference)  # the scaffold was not applied again on resume


def test_refuses_another_model_unless_overwrite(reference: Path, tmp_path: Path) -> None:
    out = reference
    with pytest.raises(UserError, match="already holds a model; pass --overwrite"):
        prepare_output(out, TINY, overwrite=False)
    assert prepare_output(out, TINY, overwrite=True) is False
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prepare_output(tmp_path / "other", TINY, overwrite=False)
    interrupted = tmp_path / "interrupted" / "checkpoint"
    interrupted.mkdir(parents=True)
    (interrupted / "state.json").write_text(json.dumps({"step": 1, "spec": {"seed": 99}}))
    with pytest.raises(UserError, match="another recipe"):
        prepare_output(tmp_path / "interrupted", TINY, overwrite=False)


def test_refuses_a_world_of_another_generator_version(data_config: DataConfig, tmp_path: Path) -> None:
    world = json.loads((data_config.root.parent / "world.json").read_text())
    (tmp_path / "annotations").mkdir()
    (tmp_path / "world.json").write_text(json.dumps({**world, "generator_version": 2}))
    with pytest.raises(UserError, match="generator version 2; this fast3d trains on version 3"):
        load_world_spec(DataConfig(root=tmp_path / "annotations"))
    with pytest.raises(UserError, match=r"no world\.json"):
        load_world_spec(DataConfig(root=tmp_path / "nowhere" / "annotations"))


def test_scaffold_sets_the_three_heads() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from fast3d_cli.sample_model.recipe import HeadRoles
    from fast3d_cli.sample_model.scaffold import apply_scaffold, slow_rotary_dims

    assert slow_rotary_dims(32) == [*range(8, 16), *range(24, 32)]
    config = LlamaConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=50,
    )  # fmt: skip
    llm = LlamaForCausalLM(config)
    apply_scaffold(llm, HeadRoles(), seed=0)
    grounding = llm.model.layers[2].self_attn
    q = grounding.q_proj.weight[:32]
    assert torch.equal(q, grounding.k_proj.weight[:32]) and q[:8].abs().sum() == 0 and q[8:16].abs().sum() > 0
    binding = llm.model.layers[0].self_attn
    basis = binding.v_proj.weight[:32].T  # hidden x head_dim, orthonormal columns
    assert torch.allclose(basis.T @ basis, torch.eye(32), atol=1e-5)
    assert torch.allclose(binding.o_proj.weight[:, :32], 0.1 * basis)
