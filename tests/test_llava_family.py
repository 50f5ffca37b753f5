"""``--model-family llava`` end to end through the CLI on a tiny LlavaForConditionalGeneration saved to disk:
dense and FasterVLM evaluation, extraction, the [CLS] scores against the tower's own attentions, and the
family/method checks that run before torch loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import fast3d, one_error_line
from .test_llava_adapter import N_IMAGE, tiny_llava, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = [("w1 w2", ["w10"]), ("w3 w4 w5 w6", ["w12", "w13"]), ("w8", ["w14 w15"])]
GREEDY = ["--num-beams", "1", "--max-new-tokens", "4", "--repetition-penalty", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaVA checkpoint folder as save_pretrained writes it: model, tokenizer and image processor."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    folder = tmp_path_factory.mktemp("llava")
    tiny_llava().save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three questions on tiny images: two PNG files (read with Pillow) and one .npy array."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("qa")
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    names = ["images/a.png", "images/b.png", "images/c.npy"]
    for name in names:
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        if name.endswith(".npy"):
            np.save(folder / name, pixels)
        else:
            Image.fromarray(pixels).save(folder / name)
    lines = [
        json.dumps({"id": f"q{i}", "image": name, "question": question, "answers": answers})
        for i, (name, (question, answers)) in enumerate(zip(names, QUESTIONS, strict=True))
    ]
    path = folder / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate(capsys, checkpoint: Path, qa_file: Path, out: Path, *args: str) -> list[dict]:
    code, stdout, stderr = fast3d(
        capsys, "eval", "--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(qa_file),
        "-o", str(out), "--device", "cpu", *GREEDY, *args,
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout.strip() == str(out / "metrics.json")
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_eval_dense_and_fastervlm_end_to_end(capsys, checkpoint: Path, qa_file: Path, tmp_path: Path) -> None:
    dense = evaluate(capsys, checkpoint, qa_file, tmp_path / "dense", "-b", "3")
    assert [r["kept_visual_tokens"] for r in dense] == [N_IMAGE] * 3
    assert [r["id"] for r in dense] == ["q0", "q1", "q2"] and all(r["pred"] for r in dense)

    pruned = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "f4", "--method", "fastervlm", "--keep", "4", "-b", "3"
    )
    assert [r["kept_visual_tokens"] for r in pruned] == [4] * 3
    metrics = json.loads((tmp_path / "f4" / "metrics.json").read_text())
    assert metrics["metrics"]["mean_kept_tokens"] == 4 and metrics["metrics"]["input_ratio"] == 75.0
    for name in ("[image_qa] EM1", "[image_qa] EM1_refined"):
        assert 0.0 <= metrics["metrics"][name] <= 1.0

    one_by_one = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "f4b1", "--method", "fastervlm", "--keep", "4", "-b", "1"
    )
    assert [r["pred"] for r in one_by_one] == [r["pred"] for r in pruned]
    by_ratio = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "r75", "--method", "fastervlm", "--ratio", "75"
    )
    assert [r["pred"] for r in by_ratio] == [r["pred"] for r in pruned]  # 75% of 16 tokens: keep 4

    keep_all = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "all", "--method", "fastervlm", "--keep", "16"
    )
    assert [r["pred"] for r in keep_all] == [r["pred"] for r in dense]
    assert [r["kept_visual_tokens"] for r in keep_all] == [N_IMAGE] * 3


def test_a_rerun_with_other_settings_is_refused(
    capsys, checkpoint: Path, qa_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    evaluate(capsys, checkpoint, qa_file, out, "--method", "random", "--keep", "3", "--limit", "1")
    code, _, stderr = fast3d(
        capsys, "eval", "--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(qa_file),
        "-o", str(out), "--method", "random", "--keep", "5", "--limit", "1", *GREEDY,
    )  # fmt: skip
    assert code == 2 and one_error_line(stderr) and "--overwrite" in stderr, stderr
    assert (out / "predictions.jsonl").is_file()


def test_cls_scores_equal_the_towers_own_attentions(checkpoint: Path, qa_file: Path) -> None:
    import torch

    from fast3d_cli.data.image_qa import load_image_qa
    from fast3d_cli.models.llava import faster_vlm_scores
    from fast3d_cli.models.llava_inputs import make_adapter, qa_batch
    from fast3d_cli.models.llava_loading import LlavaSource

    target = LlavaSource(checkpoint).load(device="cpu")
    batch = qa_batch(target, load_image_qa(qa_file))
    scores = faster_vlm_scores(make_adapter(target), batch.pixel_values)
    tower = target.model.model.vision_tower
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = tower(batch.pixel_values, output_attentions=True).attentions
    # FasterVLM: penultimate layer (LLaVA's feature layer -2), [CLS] row to the patches, mean over heads
    by_hand = attentions[-2][:, :, 0, 1:].mean(dim=1)
    assert scores.shape == (3, N_IMAGE)
    torch.testing.assert_close(scores, by_hand, rtol=1e-5, atol=1e-6)


def test_extract_writes_the_image_token_maps(capsys, checkpoint: Path, qa_file: Path, tmp_path: Path) -> None:
    import torch

    from fast3d_cli.data.image_qa import load_image_qa
    from fast3d_cli.models.llava_inputs import make_adapter, qa_batch
    from fast3d_cli.models.llava_loading import LlavaSource
    from fast3d_cli.pruning.generic import extract_maps
    from fast3d_cli.stores import open_store

    store = tmp_path / "maps.zarr"
    args = ["extract", "--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(qa_file)]
    code, stdout, stderr = fast3d(capsys, *args, "-o", str(store), "--chunk-size", "2", "--device", "cpu")
    assert code == 0 and stdout.strip() == str(store), stderr
    group = open_store(store, kind="attention").group("image_qa", "all")
    assert group.is_complete() and group.read("sample_index").tolist() == [0, 1, 2]
    maps = group.read("object_scores")
    assert maps.shape == (3, N_IMAGE)

    target = LlavaSource(checkpoint).load(device="cpu")
    samples = load_image_qa(qa_file)
    expected = extract_maps(make_adapter(target), qa_batch(target, samples), [s.answers[0] for s in samples])
    torch.testing.assert_close(torch.from_numpy(maps), expected.float(), rtol=1e-5, atol=1e-6)
    prompt = group.read("prompt_scores")
    assert np.isfinite(prompt).all() and not np.allclose(prompt, maps)

    code, stdout, stderr = fast3d(
        capsys, *args, "-o", str(store), "--chunk-size", "2", "--json", "--device", "cpu"
    )
    assert code == 0 and json.loads(stdout)["computed"] == 0, stderr

    code, _, stderr = fast3d(capsys, "info", str(store))
    assert code == 0, stderr

    # the store drives the oracle methods: --keep keeps the top map tokens, +sap the SAP counts of the maps
    from fast3d_cli.pruning.budgets import sap_keep_counts

    maps_arg = ["--maps", str(store)]
    oracle = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "o", "--method", "oracle", "--keep", "5", *maps_arg
    )
    assert [r["kept_visual_tokens"] for r in oracle] == [5] * 3
    sap = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "s", "--method", "oracle+sap", "--alpha", "0.3", *maps_arg
    )
    assert [r["kept_visual_tokens"] for r in sap] == sap_keep_counts(maps, 0.3).tolist()
    other = qa_file.parent / "other.jsonl"
    other.write_text(qa_file.read_text().replace("w8", "w9"))
    code, _, stderr = fast3d(
        capsys, "eval", "--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(other),
        "--method", "oracle", "--keep", "5", *maps_arg, "-o", str(tmp_path / "x"),
    )  # fmt: skip
    assert code == 2 and one_error_line(stderr) and "another QA file" in stderr, stderr


PROBE = """
import json, sys
from fast3d_cli.cli.app import run
code = run(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def probe(args: list[str]) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120
    )
    return json.loads(done.stdout), done.stderr


def test_methods_are_checked_against_the_family_before_torch_loads(checkpoint: Path, qa_file: Path) -> None:
    llava = ["--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(qa_file)]
    cases = {
        (
            "eval",
            "--method",
            "fastervlm",
            "--keep",
            "4",
        ): "methods for chatscene: none, random, fastv, divprune",
        ("eval", *llava, "--method", "gap+sap", "--alpha", "0.5"): (
            "methods for llava: none, random, fastv, divprune, oracle, oracle+sap, cdpruner, fastervlm"
        ),
        ("extract", "--model-family", "llava", "--method", "x"): "no such option: --method",
        ("eval", "--method", "bogus"): "unknown --method 'bogus'; choose one of none, random",
        ("eval", "--model-family", "bogus"): "unknown --model-family 'bogus'; choose one of chatscene, llava",
        ("eval", *llava, "--method", "fastervlm", "--keep", "17"): "exceeds the 16 visual tokens",
        ("eval", *llava, "--method", "fastervlm"): "needs exactly one of --keep or --ratio",
        ("eval", *llava, "--gap", "g"): "--gap does not apply to --model-family llava",
        ("eval", *llava, "--maps", "m.zarr"): "--maps does not apply to --method none",
        ("eval", *llava, "--method", "oracle", "--keep", "2"): "needs --maps (an attention store",
        ("eval", *llava, "--method", "oracle+sap", "--alpha", "auto", "--maps", "m"): "no 'auto' for llava",
        ("eval", "--qa-file", str(qa_file)): "--qa-file does not apply to --model-family chatscene",
        ("extract", "--model-family", "llava", "--qa-file", str(qa_file)): "needs --model DIR",
    }
    for args, message in cases.items():
        report, stderr = probe(list(args))
        assert report == {"code": 2, "loaded": []}, (args, stderr)
        assert one_error_line(stderr) and message in stderr, (args, stderr)
    report, stderr = probe(["eval", "--method", "bogus"])
    assert "fastervlm" in stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": 1, "image": "../x.png", "question": "q", "answers": ["a"]}', "outside the QA file's folder"),
        ('{"id": 1, "image": "images/a.png", "question": "q"}', "'answers' must be a non-empty list"),
        ('{"id": 1, "question": "q", "answers": ["a"]}', "exactly one of 'image'"),
        ("not json", "not JSON"),
        ('{"id": 1, "video": ["images/a.png"], "question": "q", "answers": ["a"]}', "gives a video"),
        ('{"id": 1, "image": "images/a.txt", "question": "q", "answers": ["a"]}', "not a picture or array"),
        ('{"id": 1, "image": "images/none.png", "question": "q", "answers": ["a"]}', "not found"),
    ],
)
def test_bad_qa_files_are_one_line(capsys, checkpoint: Path, qa_file: Path, line: str, message: str) -> None:
    bad = qa_file.parent / "bad.jsonl"
    bad.write_text(line + "\n")
    code, _, stderr = fast3d(
        capsys, "eval", "--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(bad)
    )
    assert code == 2 and one_error_line(stderr) and message in stderr, stderr


def test_renumbered_positions_equal_hf_on_the_pruned_features(
    capsys, checkpoint: Path, qa_file: Path, tmp_path: Path
) -> None:
    """--renumber-positions is the official FasterVLM: the top-[CLS] features, in order, are the image."""
    import torch

    from fast3d_cli.data.image_qa import load_image_qa
    from fast3d_cli.models.llava_inputs import qa_batch
    from fast3d_cli.models.llava_loading import LlavaSource

    out = tmp_path / "official"
    preds = evaluate(
        capsys, checkpoint, qa_file, out, "--method", "fastervlm", "--keep", "4", "--renumber-positions"
    )
    assert [r["kept_visual_tokens"] for r in preds] == [4] * 3
    target = LlavaSource(checkpoint).load(device="cpu")
    model, tokenizer = target.model, target.tokenizer
    batch = qa_batch(target, load_image_qa(qa_file))
    tower = model.model.vision_tower
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        cls = tower(batch.pixel_values, output_attentions=True).attentions[-2][:, :, 0, 1:].mean(1)
        features = torch.stack(
            list(model.model.get_image_features(pixel_values=batch.pixel_values).pooler_output)
        )
    for row, prompt in enumerate(batch.prompts):
        kept = features[row, cls[row].topk(4).indices.sort().values]
        ids = tokenizer(prompt.replace("<image>", " ".join(["<image>"] * 4)), return_tensors="pt").input_ids
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids).masked_scatter((ids == 4)[..., None], kept)
            new = model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                num_beams=1, repetition_penalty=1.0, pad_token_id=0,
            )  # fmt: skip
        assert tokenizer.decode(new[0], skip_special_tokens=True).strip() == preds[row]["pred"]


def test_renumber_positions_needs_fastervlm_at_layer_0(capsys, checkpoint: Path, qa_file: Path) -> None:
    llava = ["--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(qa_file)]
    code, _, stderr = fast3d(
        capsys, "eval", *llava, "--method", "random", "--keep", "2", "--renumber-positions"
    )
    assert code == 2 and one_error_line(stderr) and "applies to --method fastervlm" in stderr, stderr
    code, _, stderr = fast3d(capsys, "eval", "--renumber-positions")
    assert code == 2 and one_error_line(stderr) and "does not apply to --model-family chatscene" in stderr


def test_fastervlm_without_a_cls_token_is_one_line(capsys, qa_file: Path, tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor

    folder = tmp_path / "siglip"
    tiny_llava("siglip").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        folder
    )
    code, _, stderr = fast3d(
        capsys, "eval", "--model-family", "llava", "--model", str(folder), "--qa-file", str(qa_file),
        "-o", str(tmp_path / "out"), "--method", "fastervlm", "--keep", "4",
    )  # fmt: skip
    assert code == 2 and one_error_line(stderr) and "has no [CLS] token" in stderr, stderr


def test_cdpruner_runs_on_llava_batch_invariantly(
    capsys, checkpoint: Path, qa_file: Path, tmp_path: Path
) -> None:
    together = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "b3", "--method", "cdpruner", "--keep", "5", "-b", "3"
    )
    alone = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "b1", "--method", "cdpruner", "--keep", "5", "-b", "1"
    )
    assert [r["kept_visual_tokens"] for r in together] == [5] * 3
    assert [r["pred"] for r in alone] == [r["pred"] for r in together]
