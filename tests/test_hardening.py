"""Hostile and mistaken inputs: each is one ``fast3d: error:`` line and exit 2, never a traceback, and nothing
already written is lost.

Damaged chunk files, stores of the wrong kind / another model / another object count, NaN and inf maps, empty
tasks, unreadable and corrupt data files, malicious checkpoints (refused unless ``--trust-checkpoint``), and
Hypothesis fuzzing of the store reader and of the option parsing of eval, search-alpha and extract.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast3d_cli.cli.app import run
from fast3d_cli.stores import StoreError, create_store, open_store
from tests.test_crash_safety import build_random_gap, tree
from tests.test_gap_train import TINY_GAP

from .conftest import fast3d

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
STORE_ARGS = ["--tasks", "scanqa", "--split", "train,val", "--chunk-size", "4", "--batch-size", "8"]
PREDICT_ARGS = ["--tasks", "scanqa", "--split", "val", "--chunk-size", "4", "--batch-size", "8"]
ORACLE = ("--method", "oracle", "--keep", "5")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def inputs(model_dir: Path, data_config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An attention store (extract), a random GAP network, its prediction store and a tiny GAP config."""
    root = tmp_path_factory.mktemp("hardening")
    maps = root / "maps.zarr"
    extract = ["extract", "--model", str(model_dir), "--data-root", str(data_config.root), "-o", str(maps)]
    assert run([*extract, *STORE_ARGS]) == 0
    gap = build_random_gap(model_dir, data_config, root / "gap")
    pred = root / "pred.zarr"
    predict = ["predict", str(gap), "--data-root", str(data_config.root), "-o", str(pred)]
    assert run([*predict, *PREDICT_ARGS]) == 0
    (root / "tiny.json").write_text(json.dumps(TINY_GAP))
    return {"root": root, "maps": maps, "gap": gap, "pred": pred, "gap_config": root / "tiny.json"}


def refused(capsys, *args: str, message: str) -> str:
    """Run the CLI; it must exit 2 with one error line (the last stderr line) containing ``message``."""
    code, stdout, stderr = fast3d(capsys, *args)
    errors = [line for line in stderr.splitlines() if line.startswith("fast3d: error:")]
    assert code == 2 and stdout == "" and "Traceback" not in stderr, stderr
    assert len(errors) == 1 and stderr.rstrip("\n").splitlines()[-1] == errors[0], stderr
    assert message in errors[0], errors[0]
    return errors[0]


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(max(len(data), 16)))
    else:
        path.write_bytes(data[: len(data) // 2])


def predict_args(inputs: dict[str, Path], data_root: Path, out: Path, *extra: str) -> list[str]:
    args = ["predict", str(inputs["gap"]), "--data-root", str(data_root), "-o", str(out)]
    return [*args, *PREDICT_ARGS, *extra]


def eval_args(model_dir: Path, data_root: Path, out: Path, *extra: str) -> list[str]:
    args = ["eval", "--model", str(model_dir), "--data-root", str(data_root), "-o", str(out)]
    return [*args, "--tasks", "scanqa", "--limit", "8", "--num-beams", "1", "--max-new-tokens", "2", *extra]


def train_args(inputs: dict[str, Path], model_dir: Path, root: Path, store: Path, out: Path) -> list[str]:
    args = ["train-gap", str(store), "-o", str(out), "--data-root", str(root), "--tokenizer", str(model_dir)]
    return [*args, "--gap-config", str(inputs["gap_config"]), "--epochs", "1", "--batch-size", "8"]


def arrays(path: Path) -> dict[str, np.ndarray]:
    store = open_store(path)
    return {f"{g.path}/{n}": g.read(n) for g in store.groups() for n in g.array_names()}


def same_arrays(a: Path, b: Path) -> bool:
    left, right = arrays(a), arrays(b)
    return left.keys() == right.keys() and all(
        np.array_equal(left[k], v, equal_nan=True) for k, v in right.items()
    )


# --------------------------------------------------------------------------------------------- damaged chunks


@pytest.mark.parametrize("how", ["random", "truncated"])
def test_damaged_chunks_are_named_by_every_reader(
    capsys, inputs, model_dir: Path, data_config, tmp_path: Path, how: str
) -> None:
    root = data_config.root
    hint = "delete it and rerun the stage"

    # info and predict's resume check read the commit markers
    store = copy(inputs["maps"], tmp_path / "info.zarr")
    chunk = store / "scanqa/val/sample_index/c/1"
    damage(chunk, how)
    before = tree(store)
    error = refused(capsys, "info", str(store), message=f"cannot read chunk {chunk}: corrupt or truncated")
    assert hint in error and tree(store) == before

    pred = copy(inputs["pred"], tmp_path / "resume.zarr")
    chunk = pred / "scanqa/val/sample_index/c/0"
    damage(chunk, how)
    before = tree(pred)
    refused(capsys, *predict_args(inputs, root, pred), message=f"cannot read chunk {chunk}")
    assert tree(pred) == before  # nothing else touched
    if how == "random":  # the advice works: delete the file, rerun the stage
        chunk.unlink()
        code, stdout, stderr = fast3d(capsys, *predict_args(inputs, root, pred, "--json"))
        assert code == 0 and json.loads(stdout)["computed"] == 4, stderr
        assert same_arrays(pred, inputs["pred"])

    # search-alpha, eval --maps and train-gap read the scores
    pred = copy(inputs["pred"], tmp_path / "alpha.zarr")
    chunk = pred / "scanqa/val/object_scores/c/2/0"
    damage(chunk, how)
    refused(capsys, "search-alpha", str(pred), message=f"cannot read chunk {chunk}: corrupt or truncated")
    assert "sap" not in open_store(pred).attrs

    store = copy(inputs["maps"], tmp_path / "oracle.zarr")
    chunk = store / "scanqa/val/object_scores/c/1/0"
    damage(chunk, how)
    args = eval_args(model_dir, root, tmp_path / "eval", *ORACLE, "--maps", str(store))
    refused(capsys, *args, message=f"cannot read chunk {chunk}")
    if how == "random":  # an attention chunk deleted: info shows it missing and extract recomputes it
        chunk.unlink()
        code, stdout, _ = fast3d(capsys, "info", str(store), "--json")
        groups = {g["task"] + "/" + g["split"]: g for g in json.loads(stdout)["groups"]}
        assert code == 0 and groups["scanqa/val"]["chunks"] == "2/3"
        extract = ["extract", "--model", str(model_dir), "--data-root", str(root), "-o", str(store)]
        code, stdout, stderr = fast3d(capsys, *extract, *STORE_ARGS, "--json")
        assert code == 0 and json.loads(stdout)["computed"] == 4, stderr
        assert same_arrays(store, inputs["maps"])

    store = copy(inputs["maps"], tmp_path / "train.zarr")
    chunk = store / "scanqa/train/object_scores/c/3/0"
    damage(chunk, how)
    args = train_args(inputs, model_dir, root, store, tmp_path / "gap")
    refused(capsys, *args, message=f"cannot read chunk {chunk}")


@pytest.mark.parametrize("how", ["bit-flip", "truncated"])
def test_info_verifies_the_chunks_it_reports(capsys, inputs, tmp_path: Path, how: str) -> None:
    """info said "complete: yes" for a store whose score chunk was damaged; search-alpha then refused it."""
    store = copy(inputs["maps"], tmp_path / "info.zarr")
    code, _, stderr = fast3d(capsys, "info", str(store))
    assert code == 0 and "written chunk files verified" in stderr and "warning" not in stderr, stderr
    chunk = store / "scanqa/val/object_scores/c/1/0"
    data = bytearray(chunk.read_bytes())
    if how == "bit-flip":
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
    else:
        chunk.write_bytes(bytes(data[: len(data) - 7]))
    before = tree(store)
    refused(capsys, "info", str(store), message=f"cannot read chunk {chunk}: corrupt or truncated")
    refused(capsys, "info", str(store), "--json", message=f"cannot read chunk {chunk}")
    code, _, stderr = fast3d(capsys, "info", str(store), "--no-verify")
    assert code == 0 and "checksums: not verified (--no-verify)" in stderr, stderr
    assert tree(store) == before


# --------------------------------------------------------------------------------------------- foreign stores


def test_wrong_kind_and_foreign_stores(capsys, inputs, model_dir: Path, data_config, tmp_path: Path) -> None:
    root = data_config.root
    maps, pred = inputs["maps"], inputs["pred"]
    out = tmp_path / "eval"
    refused(
        capsys, *eval_args(model_dir, root, out, "--method", "gap", "--keep", "5", "--maps", str(maps)),
        message="is an 'attention' store; this method needs a 'prediction' store",
    )  # fmt: skip
    args = eval_args(model_dir, root, out, *ORACLE, "--maps", str(pred))
    refused(capsys, *args, message="needs an 'attention' store")

    # a stage never replaces another stage's store, not even with --overwrite
    attention = copy(maps, tmp_path / "attention.zarr")
    before = tree(attention)
    refused(
        capsys, *predict_args(inputs, root, attention, "--overwrite"),
        message="is a store of 'attention' maps; this stage writes 'prediction' maps",
    )  # fmt: skip
    assert tree(attention) == before
    prediction = copy(pred, tmp_path / "prediction.zarr")
    extract = ["extract", "--model", str(model_dir), "--data-root", str(root), "-o", str(prediction)]
    refused(capsys, *extract, *STORE_ARGS, "--overwrite", message="is a store of 'prediction' maps")
    assert same_arrays(prediction, pred)

    # a zarr group that is not a fast3d store, and a plain file
    import zarr

    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w").create_array("x", shape=(4,), dtype="float32")
    plain = tmp_path / "plain.zarr"
    plain.write_text("not a store")
    for path in (foreign, plain):
        message = f"{path} is not a fast3d store"
        refused(capsys, "info", str(path), message=message)
        refused(capsys, "search-alpha", str(path), message=message)
        refused(capsys, *train_args(inputs, model_dir, root, path, tmp_path / "gap"), message=message)
        refused(capsys, *eval_args(model_dir, root, out, *ORACLE, "--maps", str(path)), message=message)

    # another model: eval refuses (--force to override); another dataset: train-gap refuses
    other = copy(maps, tmp_path / "other.zarr")
    open_store(other, read_only=False).update_attrs(model="another-model", data="other-features")
    refused(
        capsys, *eval_args(model_dir, root, out, *ORACLE, "--maps", str(other)),
        message="was made for another model and data (object features) than this evaluation; use --force",
    )  # fmt: skip
    refused(
        capsys, *train_args(inputs, model_dir, root, other, tmp_path / "gap"),
        message="was extracted from other features",
    )  # fmt: skip
    code, _, stderr = fast3d(capsys, "search-alpha", str(other), "--target", "50")
    assert code == 0, stderr  # alpha is a property of the maps alone


# --------------------------------------------------------------------------------------------- bad maps


def _rewrite(path: Path, task: str, split: str, row: int, value: float) -> None:
    group = open_store(path, read_only=False).group(task, split)
    chunk = row // group.chunk_size
    start, stop = group.chunk_bounds(chunk)
    scores = group.read("object_scores")[start:stop]
    scores[row - start, 3] = value
    group.write_chunk(chunk, np.arange(start, stop), {"object_scores": scores, "prompt_scores": scores})


def test_nan_and_inf_maps(capsys, inputs, model_dir: Path, data_config, tmp_path: Path) -> None:
    root = data_config.root
    store = copy(inputs["maps"], tmp_path / "nan.zarr")
    _rewrite(store, "scanqa", "val", 2, float("nan"))
    _rewrite(store, "scanqa", "train", 5, float("inf"))
    code, stdout, stderr = fast3d(capsys, "info", str(store), "--json")  # complete, but not usable: said so
    groups = {f"{g['task']}/{g['split']}": g for g in json.loads(stdout)["groups"]}
    assert code == 0 and all(g["complete"] for g in groups.values())
    assert groups["scanqa/val"]["nonfinite_samples"] == groups["scanqa/train"]["nonfinite_samples"] == 1
    code, _, stderr = fast3d(capsys, "info", str(store))
    assert code == 0 and "fast3d: warning: 2 samples have NaN or infinite maps (" in stderr, stderr
    assert "scanqa/train 1" in stderr and "scanqa/val 1" in stderr
    refused(capsys, "search-alpha", str(store), message="scanqa/val: 1 samples have NaN scores (rows [2])")
    args = eval_args(model_dir, root, tmp_path / "eval", *ORACLE, "--maps", str(store))
    refused(capsys, *args, message="has NaN or infinite object_scores for 1 of the samples to evaluate")
    refused(
        capsys, *train_args(inputs, model_dir, root, store, tmp_path / "gap"),
        message="scanqa/train/object_scores row 5 is not finite",
    )  # fmt: skip

    pred = copy(inputs["pred"], tmp_path / "inf.zarr")
    _rewrite(pred, "scanqa", "val", 7, float("-inf"))
    refused(capsys, "search-alpha", str(pred), message="1 samples have infinite scores (rows [7])")


def test_object_count_mismatch(capsys, inputs, model_dir: Path, data_config, tmp_path: Path) -> None:
    root = data_config.root
    source = open_store(inputs["maps"])
    fifty = tmp_path / "fifty.zarr"
    store = create_store(fifty, {**source.attrs, "n_objects": 50, "n_visual": 150})
    rng = np.random.default_rng(0)
    for group in source.groups():
        new = store.create_group(group.task, group.split, group.n_samples, group.attrs, optional=False)
        scores = rng.dirichlet(np.ones(50), size=group.n_samples).astype(np.float32)
        for chunk in range(new.n_chunks):
            start, stop = new.chunk_bounds(chunk)
            rows = {"object_scores": scores[start:stop], "prompt_scores": scores[start:stop]}
            new.write_chunk(chunk, np.arange(start, stop), rows)
    refused(
        capsys, *train_args(inputs, model_dir, root, fifty, tmp_path / "gap"),
        message="holds maps over 50 objects but the data has 100 objects per scene",
    )  # fmt: skip
    args = eval_args(model_dir, root, tmp_path / "eval", *ORACLE, "--maps", str(fifty))
    refused(capsys, *args, message="holds maps over 50 objects but the model reads 100 objects per scene")
    code, _, stderr = fast3d(capsys, "search-alpha", str(fifty), "--target", "50")
    assert code == 0 and "M=50" in stderr, stderr  # the search only needs the maps themselves

    claims = copy(inputs["maps"], tmp_path / "claims.zarr")  # attributes that disagree with the arrays
    open_store(claims, read_only=False).update_attrs(n_objects=50)
    refused(capsys, "info", str(claims), message="object_scores has shape (40, 100), expected (40, 50)")


# --------------------------------------------------------------------------------------------- data files


def data_copy(data_config, tmp_path: Path) -> Path:
    return copy(data_config.root, tmp_path / "annotations")


def test_empty_task(capsys, inputs, model_dir: Path, data_config, tmp_path: Path) -> None:
    root = data_copy(data_config, tmp_path)
    (root / "scanqa_val.json").write_text("[]")
    message = "scanqa/val has no samples"
    refused(capsys, *predict_args(inputs, root, tmp_path / "pred.zarr"), message=message)
    extract = ["extract", "--model", str(model_dir), "--data-root", str(root), "-o", str(tmp_path / "m.zarr")]
    refused(capsys, *extract, "--tasks", "scanqa", "--split", "val", message=message)
    refused(capsys, *eval_args(model_dir, root, tmp_path / "eval"), message=message)


def _unreadable(path: Path) -> str:
    """Make ``path`` unreadable; the reason the error gives. Root ignores permissions: a directory instead."""
    if IS_ROOT:
        path.unlink()
        path.mkdir()
        return "not a regular file"
    path.chmod(0)
    return "Permission denied"


@pytest.mark.parametrize("name", ["scanqa_val.json", "scannet_mask3d_videofeats.pt"])
def test_unreadable_data_files(capsys, inputs, model_dir: Path, data_config, tmp_path: Path, name: str):
    root = data_copy(data_config, tmp_path)
    reason = _unreadable(root / name)
    try:
        refused(
            capsys, *predict_args(inputs, root, tmp_path / "pred.zarr"),
            message=f"cannot read {root / name}: {reason}",
        )  # fmt: skip
        refused(capsys, *eval_args(model_dir, root, tmp_path / "eval"), message=f"cannot read {root / name}")
    finally:
        if not IS_ROOT:
            (root / name).chmod(0o644)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("scanqa_val.json", b'[{"scene_id": "scene0000_00", "prompt": ', "cannot read JSON file"),
        ("scanqa_val.json", bytes(range(256)), "cannot read JSON file"),
        ("scannet_mask3d_videofeats.pt", np.random.default_rng(1).bytes(4000), "corrupt"),
        ("scannet_mask3d_uni3d_feats.pt", None, "corrupt"),  # truncated
        ("scannet_mask3d_val_attributes.pt", b"", "corrupt"),
    ],
)
def test_corrupt_data_files(
    capsys, inputs, data_config, tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    root = data_copy(data_config, tmp_path)
    path = root / name
    path.write_bytes(path.read_bytes()[:1000] if content is None else content)
    refused(capsys, *predict_args(inputs, root, tmp_path / "pred.zarr"), message=message)


# --------------------------------------------------------------------------------------------- checkpoints


class WritesAFile:
    """A pickle payload that runs a shell command when unpickled (what --trust-checkpoint allows)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class TrainConfig(dict):
    """A training config object pickled as a plain object (NEWOBJ + BUILD), as Chat-Scene's EasyDict."""


def test_checkpoints_need_trust_to_run_code(capsys, inputs, data_config, tmp_path: Path) -> None:
    from fast3d_cli.gap import load_gap

    model, tokenizer = load_gap(inputs["gap"])
    roberta = tmp_path / "roberta"  # the official checkpoint's RoBERTa folder: config and tokenizer
    model.config.roberta_config().save_pretrained(str(roberta))
    tokenizer.save_pretrained(str(roberta))
    extra = ("--roberta", str(roberta), "--gap-config", str(inputs["gap"] / "config.json"))
    state = model.state_dict()
    root = data_config.root

    # a pickled config object: inert placeholders, no flag needed
    config = TrainConfig(lr=1e-4, model={"roberta": "roberta-base"})
    torch.save({"model_state_dict": state, "config": config}, tmp_path / "plain.pth")
    args = predict_args(inputs, root, tmp_path / "plain.zarr", *extra)
    args[1] = str(tmp_path / "plain.pth")
    code, _, stderr = fast3d(capsys, *args)
    assert code == 0, stderr

    marker = tmp_path / "pwned"
    torch.save({"model_state_dict": state, "payload": WritesAFile(marker)}, tmp_path / "evil.pth")
    args = predict_args(inputs, root, tmp_path / "evil.zarr", *extra)
    args[1] = str(tmp_path / "evil.pth")
    error = refused(capsys, *args, message="loading it calls posix.system, which could run arbitrary code")
    assert "--trust-checkpoint" in error and not marker.exists() and not (tmp_path / "evil.zarr").exists()
    with open(tmp_path / "evil-plain.pth", "wb") as handle:  # a plain pickle: torch's legacy reader path
        pickle.dump({"model_state_dict": {}, "payload": WritesAFile(marker)}, handle)
    args[1] = str(tmp_path / "evil-plain.pth")
    refused(capsys, *args, message="loading it calls posix.system, which could run arbitrary code")
    assert not marker.exists() and not (tmp_path / "evil.zarr").exists()
    args[1] = str(tmp_path / "evil.pth")

    base_llm = tmp_path / "vicuna"  # never reached: the checkpoint is refused first
    base_llm.mkdir()
    torch.save({"model": {}, "config": WritesAFile(marker)}, tmp_path / "chat.pth")
    model_args = ["--checkpoint", str(tmp_path / "chat.pth"), "--base-llm", str(base_llm)]
    for command, out in (("eval", tmp_path / "e"), ("extract", tmp_path / "m.zarr")):
        args_ = [command, "--data-root", str(root), "-o", str(out), "--tasks", "scanqa", *model_args]
        refused(capsys, *args_, message="--trust-checkpoint")
    assert not marker.exists()

    # trusted: full pickle, the payload runs (that is the risk the flag documents) and predict works
    code, _, stderr = fast3d(capsys, *args, "--trust-checkpoint")
    assert code == 0 and marker.exists(), stderr


# --------------------------------------------------------------------------------------------- fuzzing


def _template(path: Path) -> Path:
    store = create_store(
        path,
        {"kind": "prediction", "model": "m", "data": "d", "n_objects": 4, "n_visual": 12, "n_layers": 2,
         "chunk_size": 3},
    )  # fmt: skip
    group = store.create_group("scanqa", "val", 7, {"annotation": "a"}, optional=True)
    rng = np.random.default_rng(0)
    for chunk in range(group.n_chunks):
        start, stop = group.chunk_bounds(chunk)
        n = stop - start
        rows = {
            "object_scores": rng.normal(size=(n, 4)).astype(np.float32),
            "prompt_scores": rng.normal(size=(n, 4)).astype(np.float32),
            "token_scores": rng.normal(size=(n, 12)).astype(np.float16),
            "layer_scores": rng.normal(size=(n, 2, 4)).astype(np.float16),
        }
        group.write_chunk(chunk, np.arange(start, stop), rows)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template(tmp_path_factory.mktemp("template") / "store.zarr")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


def _mutate(store: Path, data: st.DataObject) -> None:
    files = sorted(p for p in store.rglob("*") if p.is_file())
    metadata = [p for p in files if p.name == "zarr.json"]
    if not metadata:
        return
    kind = data.draw(st.sampled_from(["field", "field", "json", "bytes", "truncate", "delete"]))
    if kind == "field":  # one metadata or attribute value replaced
        path = data.draw(st.sampled_from(metadata))
        try:
            document = json.loads(path.read_text())
        except ValueError:  # an earlier mutation wrote bytes there
            return
        paths = _paths(document)
        if not paths:  # an earlier mutation left a scalar document
            return
        keys = data.draw(st.sampled_from(paths))
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = data.draw(JSON)
        path.write_text(json.dumps(document))
    elif kind == "json":
        data.draw(st.sampled_from(metadata)).write_text(json.dumps(data.draw(JSON)))
    elif kind == "bytes":
        data.draw(st.sampled_from(files)).write_bytes(data.draw(st.binary(max_size=64)))
    elif kind == "truncate":
        path = data.draw(st.sampled_from(files))
        content = path.read_bytes()
        path.write_bytes(content[: data.draw(st.integers(0, max(len(content) - 1, 0)))])
    else:
        target = data.draw(st.sampled_from([p.parent for p in metadata if p.parent != store] + files))
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def _read_everything(path: Path) -> None:
    store = open_store(path)
    store.summary()
    for group in store.groups():
        for name in group.array_names():
            group.read(name)
        list(group.iter_samples())
        group.is_complete()


@FUZZ
@given(data=st.data())
def test_fuzz_store_reader(capsys, template: Path, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = copy(template, Path(tmp) / "store.zarr")
        for _ in range(data.draw(st.integers(1, 2))):
            _mutate(store, data)
        with contextlib.suppress(StoreError):
            _read_everything(store)
        _assert_clean(capsys, "info", str(store), *data.draw(st.sampled_from([[], ["--json"]])), collect=True)


VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-inf", "-1", "0", "1", "1e400", "auto", "0.5", "99.9", "100"]),
)


def _options(data: st.DataObject, names: dict[str, st.SearchStrategy]) -> list[str]:
    out = []
    for name, valid in names.items():
        if data.draw(st.booleans()):
            out.append(f"{name}={data.draw(st.one_of(valid, VALUES))}")
    return out


def _assert_clean(capsys, *args: str, collect: bool = False) -> None:
    """Exit 0 or 2 and no traceback on stderr (with ``collect``, also none logged at garbage collection, as
    asyncio does for a failed task nobody awaited)."""
    code = run(list(args))
    if collect:
        gc.collect()
    stderr = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in stderr, (args, stderr)


@FUZZ
@given(data=st.data())
def test_fuzz_eval_pruning_options(capsys, tmp_path: Path, data: st.DataObject) -> None:
    from fast3d_cli.pruning.methods import METHODS

    options = _options(
        data,
        {
            "--method": st.sampled_from(list(METHODS)),
            "--keep": st.integers(0, 400).map(str),
            "--ratio": st.floats(0, 100).map(str),
            "--alpha": st.floats(0, 1).map(str),
            "--layer": st.integers(0, 3).map(str),
            "--granularity": st.sampled_from(["object", "token"]),
        },
    )
    # no model there: valid options end in "model path not found" (exit 2) without running anything
    _assert_clean(capsys, "eval", "--model", str(tmp_path / "none"), "-o", str(tmp_path / "out"), *options)


@FUZZ
@given(data=st.data())
def test_fuzz_search_alpha_options(capsys, template: Path, data: st.DataObject) -> None:
    options = _options(
        data,
        {
            "--target": st.floats(0, 100).map(str),
            "--tolerance": st.floats(0, 50).map(str),
            "--weighting": st.sampled_from(["task", "sample"]),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = copy(template, Path(tmp) / "store.zarr")
        _assert_clean(capsys, "search-alpha", str(store), *options)


@FUZZ
@given(data=st.data())
def test_fuzz_extract_options(capsys, tmp_path: Path, data: st.DataObject) -> None:
    options = _options(
        data, {"--limit": st.integers(1, 100).map(str), "--batch-size": st.integers(1, 100).map(str)}
    )
    args = ["extract", "--model", str(tmp_path / "none"), "-o", str(tmp_path / "m.zarr"), *options]
    _assert_clean(capsys, *args, "--tasks", "scanqa")


def test_pruning_options_fail_before_the_model_loads(capsys, tmp_path: Path) -> None:
    out = ["--model", str(tmp_path / "none"), "-o", str(tmp_path / "out")]
    for options, message in [
        (["--method", "random", "--ratio", "nan"], "--ratio must be in [0, 100)"),
        (["--method", "random", "--keep", "-3"], "--keep must be >= 0"),
        (["--method", "random", "--keep", "3", "--layer", "-1"], "--layer must be >= 0"),
        (["--method", "oracle+sap", "--alpha", "inf", "--maps", "x"], "--alpha must be in (0, 1]"),
        (["--method", "bogus"], "unknown --method 'bogus'"),
        (["--method", "random", "--keep", "3", "--granularity", "pixel"], "--granularity must be object"),
    ]:
        refused(capsys, "eval", *out, *options, message=message)
