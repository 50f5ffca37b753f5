"""``--model-family llava`` on a tiny VideoLlavaForConditionalGeneration saved to disk: the adapter matches
Hugging Face's forward, FasterVLM keeps every frame's top [CLS]-attention tokens in order, and the CLI runs
dense and pruned evaluation end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import fast3d, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, UNK, BOS, EOS, IMAGE, VIDEO = 0, 1, 2, 3, 4, 5
WORDS = [
    "<pad>",
    "<unk>",
    "<s>",
    "</s>",
    "<image>",
    "<video>",
    "USER:",
    "ASSISTANT:",
    *[f"w{i}" for i in range(30)],
]
FRAMES, PER_FRAME = 2, 17  # 56 px / 14 px patches: 16 patches + the frame's [CLS] token
QUESTIONS = [("w1 w2", ["w10"]), ("w3 w4 w5", ["w12"]), ("w8", ["w14"])]
GREEDY = ["--num-beams", "1", "--max-new-tokens", "4", "--repetition-penalty", "1"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
    )  # fmt: skip


def tiny_video_llava():
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
    )

    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
    text = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        max_position_embeddings=256,
    )  # fmt: skip
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(**shape, image_size=56, patch_size=14).to_dict(),
        text_config=text.to_dict(),
        image_token_index=IMAGE,
        video_token_index=VIDEO,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = VideoLlavaForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peaky logits: greedy choices far from ties
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.3 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model + tokenizer + image processor (the video processor needs torchvision, absent here)."""
    from transformers import CLIPImageProcessor

    folder = tmp_path_factory.mktemp("video_llava")
    tiny_video_llava().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("video_qa")
    rng = np.random.default_rng(1)
    lines = []
    for i, (question, answers) in enumerate(QUESTIONS):
        frames = [f"v{i}_{f}.npy" for f in range(FRAMES)]
        for frame in frames:
            np.save(folder / frame, rng.random((40, 56, 3)).astype(np.float32))
        lines.append(json.dumps({"id": i, "video": frames, "question": question, "answers": answers}))
    path = folder / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint: Path, qa_file: Path):
    from fast3d_cli.data.image_qa import load_image_qa
    from fast3d_cli.models.llava_inputs import make_adapter, qa_batch
    from fast3d_cli.models.llava_loading import LlavaSource

    target = LlavaSource(checkpoint).load(device="cpu")
    return make_adapter(target), qa_batch(target, load_image_qa(qa_file))


def test_adapter_matches_the_hf_forward(loaded) -> None:
    adapter, batch = loaded
    model = adapter.model
    inputs = adapter.build_inputs(batch)
    assert inputs.n_visual == FRAMES * PER_FRAME
    for row, prompt in enumerate(batch.prompts):
        expanded = prompt.replace("<video>", " ".join(["<video>"] * FRAMES * PER_FRAME))
        ids = adapter.tokenizer(expanded, return_tensors="pt").input_ids
        with torch.no_grad():
            hf = model(input_ids=ids, pixel_values_videos=batch.pixel_values[row : row + 1]).logits
            real = inputs.attention_mask[row].bool()
            ours = adapter.language_model(
                inputs_embeds=inputs.inputs_embeds[row : row + 1, real], use_cache=False
            ).logits
        torch.testing.assert_close(ours, hf, rtol=1e-4, atol=1e-4)


def test_fastervlm_keeps_each_frames_top_tokens_in_order(loaded) -> None:
    from fast3d_cli.pruning.engine import PrunedDecoder
    from fast3d_cli.pruning.generic import pruning_plan

    adapter, batch = loaded
    inputs = adapter.build_inputs(batch)
    plan = pruning_plan(adapter, batch, inputs, "fastervlm", keep=FRAMES * 4)
    decoder = PrunedDecoder(adapter.language_model, plan)
    decoder.prefill(inputs.inputs_embeds, inputs.attention_mask)
    tower = adapter.vision_tower
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = tower(batch.pixel_values.flatten(0, 1), output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")
    cls_rows = attentions[-2][:, :, 0, 1:].mean(1).view(len(QUESTIONS), FRAMES, -1)  # penultimate, head mean
    for row in range(len(QUESTIONS)):
        expected = []
        for frame in range(FRAMES):
            top = cls_rows[row, frame].topk(3).indices + 1  # 3 patches after the frame's [CLS] token
            expected += [frame * PER_FRAME, *(frame * PER_FRAME + top).tolist()]
        assert decoder.report.kept_visual[row, : FRAMES * 4].tolist() == sorted(expected)


def evaluate(capsys, checkpoint: Path, qa_file: Path, out: Path, *args: str) -> list[dict]:
    code, _, stderr = fast3d(
        capsys, "eval", "--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(qa_file),
        "-o", str(out), "--device", "cpu", *GREEDY, *args,
    )  # fmt: skip
    assert code == 0, stderr
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_video_eval_end_to_end(capsys, checkpoint: Path, qa_file: Path, tmp_path: Path) -> None:
    dense = evaluate(capsys, checkpoint, qa_file, tmp_path / "dense", "-b", "3")
    assert [r["kept_visual_tokens"] for r in dense] == [FRAMES * PER_FRAME] * 3
    pruned = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "k8", "--method", "fastervlm", "--keep", "8", "-b", "3"
    )
    assert [r["kept_visual_tokens"] for r in pruned] == [8] * 3
    alone = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "k8b1", "--method", "fastervlm", "--keep", "8", "-b", "1"
    )
    assert [r["pred"] for r in alone] == [r["pred"] for r in pruned]
    ratio = evaluate(capsys, checkpoint, qa_file, tmp_path / "r75", "--method", "fastervlm", "--ratio", "75")
    assert [r["pred"] for r in ratio] == [r["pred"] for r in pruned]  # 75% of 17 per frame: keep 4 per frame
    keep_all = evaluate(
        capsys, checkpoint, qa_file, tmp_path / "all", "--method", "fastervlm", "--keep", "34"
    )
    assert [r["pred"] for r in keep_all] == [r["pred"] for r in dense]
    official = evaluate(
        capsys,
        checkpoint,
        qa_file,
        tmp_path / "o",
        "--method",
        "fastervlm",
        "--keep",
        "8",
        "--renumber-positions",
    )
    assert [r["kept_visual_tokens"] for r in official] == [8] * 3
    whole = evaluate(
        capsys,
        checkpoint,
        qa_file,
        tmp_path / "w",
        "--method",
        "fastervlm",
        "--keep",
        "34",
        "--renumber-positions",
    )
    assert [r["pred"] for r in whole] == [r["pred"] for r in dense]


def test_uneven_frame_budgets_are_refused(capsys, checkpoint: Path, qa_file: Path, tmp_path: Path) -> None:
    code, _, stderr = fast3d(
        capsys, "eval", "--model-family", "llava", "--model", str(checkpoint), "--qa-file", str(qa_file),
        "-o", str(tmp_path / "x"), "--method", "fastervlm", "--keep", "7",
    )  # fmt: skip
    assert code == 2 and one_error_line(stderr) and "multiple of the 2 frames" in stderr, stderr
    assert not (tmp_path / "x").exists()
