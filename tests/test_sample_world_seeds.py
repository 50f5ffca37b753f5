"""``build-world --scene-seed/--objects``: fresh test worlds that the committed sample model can read.

``seed`` draws the feature prototypes the model learned to read; ``scene_seed`` only the scenes. Measured
(greedy, all 440 val ScanRefer samples, Acc@0.5): committed world 76.1%, scene seed 7 with the committed
8-40 objects 75.2%, scene seed 7 with 20-60 objects 64.6% (more objects per scene: a harder world, not an
unreadable one), seed 7 (new prototypes) about 5%.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fast3d_cli.cli.app import run
from fast3d_cli.data import DataConfig
from fast3d_cli.sample_world import WorldSpec, generate_world
from fast3d_cli.sample_world.generator import parse_object_range

from .conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = REPO / "sample_data" / "model"
N = 100  # ScanRefer val samples per world: Acc@0.5 ~0.75 has a standard error of ~4.3 points at 100
SAMPLING = 0.15  # 2.5 standard errors of a difference of two 100-sample accuracies near 0.75
SHIFT_20_60 = 0.12  # measured over 440 samples: 20-60 objects cost 11.6 points
# A test world: few scenes (only val is read), 100 ScanRefer val samples drawn over 12 scenes.
TEST_WORLD = WorldSpec(n_train_scenes=1, n_val_scenes=12, val_samples_per_task=N, train_samples_per_task=1)


@pytest.mark.parametrize(
    ("text", "expected"), [("20-60", (20, 60)), ("30", (30, 30)), (" 2-100 ", (2, 100))]
)
def test_object_range_parses(text: str, expected: tuple[int, int]) -> None:
    assert parse_object_range(text) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objects", "60-20"], "reversed"),
        (["--objects", "20-101"], "out of range"),
        (["--objects", "1-10"], "out of range"),
        (["--objects", "2.5-10"], "integers"),
        (["--objects", "many"], "integers"),
        (["--objects", "1-2-3"], "integers"),
        (["--scene-seed", "x"], "--scene-seed"),
        (["--scene-seed", "-1"], "--scene-seed"),
    ],
)
def test_bad_world_options_end_in_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["sample", "build-world", "-o", str(tmp_path / "w"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "w").exists()


def test_scene_seed_keeps_the_prototypes_and_changes_the_scenes(tmp_path: Path) -> None:
    import torch

    base = replace(TEST_WORLD, n_val_scenes=2, val_samples_per_task=5)
    root = {}
    for name, spec in {
        "committed": base,
        "scenes": replace(base, scene_seed=3, min_objects=20, max_objects=60),
        "prototypes": replace(base, seed=3),
    }.items():
        summary = generate_world(tmp_path / name, spec)
        root[name] = (tmp_path / name / "annotations", summary)
    scenes = root["scenes"][1]
    assert scenes["spec"]["scene_seed"] == 3 and scenes["spec"]["seed"] == 0
    feats = {k: torch.load(r / "scannet_mask3d_uni3d_feats.pt") for k, (r, _) in root.items()}
    assert next(iter(feats["committed"])) == next(iter(feats["scenes"]))  # same scene ids, other scenes
    assert not torch.equal(next(iter(feats["committed"].values())), next(iter(feats["scenes"].values())))
    attrs = torch.load(root["scenes"][0] / "scannet_train_attributes.pt")
    attrs |= torch.load(root["scenes"][0] / "scannet_val_attributes.pt")
    assert all(20 <= len(a["objects"]) <= 60 for a in attrs.values())


def _scanrefer_accuracy(model, fingerprint: str, root: Path, out: Path) -> float:
    from fast3d_cli.evaluation import EvalSettings
    from fast3d_cli.evaluation.runner import run_eval
    from fast3d_cli.generation import GenerationConfig

    settings = EvalSettings(tasks=("scanrefer",), limit=N, generation=GenerationConfig(num_beams=1))
    result = run_eval(model, fingerprint, DataConfig(root=root), settings, out)
    assert result["samples"]["scanrefer"] == N
    return result["headline"]["scanrefer"]


@pytest.mark.skipif(not (MODEL / "model.safetensors").is_file(), reason="no committed sample model")
def test_committed_model_reads_a_world_with_another_scene_seed(tmp_path: Path) -> None:
    """Greedy ScanRefer Acc@0.5 on 100 samples per world. The committed-range world must score within
    ``SAMPLING`` of the committed val set; the 20-60-object world is harder and gets ``SHIFT_20_60`` on top;
    new prototypes (``seed``) must fall to chance level, or the test could not tell the two apart."""
    from fast3d_cli.models.loading import ModelSource

    source = ModelSource(model_dir=MODEL)
    model, fingerprint = source.load(device="cpu", dtype="float32"), source.fingerprint()
    worlds = {
        "same range": replace(TEST_WORLD, scene_seed=5),
        "20-60": replace(TEST_WORLD, scene_seed=5, min_objects=20, max_objects=60),
        "new prototypes": replace(TEST_WORLD, seed=5),
    }
    committed = _scanrefer_accuracy(model, fingerprint, DataConfig().root, tmp_path / "eval-committed")
    scores = {}
    for name, spec in worlds.items():
        generate_world(tmp_path / name, spec)
        root = tmp_path / name / "annotations"
        scores[name] = _scanrefer_accuracy(model, fingerprint, root, tmp_path / f"eval-{name}")
    print(f"committed {committed:.2f}", {k: round(v, 2) for k, v in scores.items()})
    assert committed > 0.65, scores
    assert abs(scores["same range"] - committed) <= SAMPLING, (committed, scores)
    assert scores["20-60"] >= committed - SHIFT_20_60 - SAMPLING, (committed, scores)
    assert scores["new prototypes"] < 0.2, (committed, scores)
