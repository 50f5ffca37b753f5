"""The adapter protocol on a tiny random LlavaForConditionalGeneration: the adapter builds HF's inputs, every
method prunes batch-invariantly, removal = masking, maps and [CLS] scores = their eager definitions."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from fast3d_cli.generation import GenerationConfig, HFCausalLMDecoder, generate, position_ids_from_mask
from fast3d_cli.models.adapter import ClsAttentionAdapter, SampleKey, TargetAdapter
from fast3d_cli.models.llava import ImageBatch, LlavaAdapter, faster_vlm_scores
from fast3d_cli.pruning.engine import MaskedDecoder, PrunedDecoder, PruningPlan
from fast3d_cli.pruning.generic import extract_maps, prune_generate, pruning_plan

PAD, UNK, BOS, EOS, IMAGE = 0, 1, 2, 3, 4
N_IMAGE = 16  # 56 px / 14 px patches = 4 x 4 image tokens (+ the [CLS] token LLaVA drops)
WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", *[f"w{i}" for i in range(41)]]
PROMPTS = [
    "USER: <image> w1 w2 ASSISTANT:",
    "w9 USER: <image> w3 w4 w5 w6 w7 ASSISTANT:",
    "USER: <image> w8 ASSISTANT:",
]
ANSWERS = ["w10 w11", "w12", "w13 w14 w15 w16"]
GREEDY = GenerationConfig(num_beams=1, max_new_tokens=5, repetition_penalty=1.0, min_length=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_llava(
    vision: str = "clip", strategy: str = "default", seed: int = 0
) -> LlavaForConditionalGeneration:
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
    vision_config = (
        CLIPVisionConfig(**shape, image_size=56, patch_size=14)
        if vision == "clip"
        else SiglipVisionConfig(**shape, image_size=56, patch_size=14)
    )
    text_config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        max_position_embeddings=256,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=IMAGE,
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
    )
    model = LlavaForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # peaky logits: greedy choices far from ties
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.3 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def adapter() -> LlavaAdapter:
    return LlavaAdapter(tiny_llava(), tiny_tokenizer())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(len(PROMPTS), 3, 56, 56, generator=torch.Generator().manual_seed(1))


def image_batch(images: torch.Tensor, rows: list[int] | None = None) -> ImageBatch:
    rows = list(range(len(PROMPTS))) if rows is None else rows
    return ImageBatch([PROMPTS[r] for r in rows], images[rows], keys=[SampleKey("image", r) for r in rows])


def test_adapter_satisfies_the_protocol(adapter: LlavaAdapter) -> None:
    assert isinstance(adapter, TargetAdapter)
    assert isinstance(adapter, ClsAttentionAdapter)


def test_keep_all_equals_dense_and_hf_generate(adapter: LlavaAdapter, images: torch.Tensor) -> None:
    inputs = adapter.build_inputs(image_batch(images))
    assert inputs.n_visual == N_IMAGE and inputs.group == 1
    # the embeddings HF builds: image features scattered into the expanded placeholder tokens
    expanded = [p.replace("<image>", " ".join(["<image>"] * N_IMAGE)) for p in PROMPTS]
    encoded = adapter.tokenizer(expanded, padding=True, return_tensors="pt")
    model = adapter.model
    with torch.no_grad():
        hf_embeds = model.get_input_embeddings()(encoded.input_ids)
        features = torch.cat(list(model.model.get_image_features(pixel_values=images).pooler_output))
        mask = (encoded.input_ids == IMAGE)[..., None]
        hf_embeds = hf_embeds.masked_scatter(mask, features)
    real = encoded.attention_mask.bool()
    assert torch.equal(inputs.attention_mask, encoded.attention_mask)
    torch.testing.assert_close(inputs.inputs_embeds[real], hf_embeds[real])
    columns = inputs.visual_start[:, None] + torch.arange(N_IMAGE)
    assert bool((encoded.input_ids.gather(1, columns) == IMAGE).all())

    dense = generate(
        HFCausalLMDecoder(adapter.language_model),
        inputs.inputs_embeds,
        inputs.attention_mask,
        GREEDY,
        EOS,
        BOS,
    )
    keep_all = prune_generate(adapter, image_batch(images), "random", keep=N_IMAGE, layer=2, gen=GREEDY)
    assert keep_all.ids == dense
    assert keep_all.kept_tokens == [N_IMAGE] * len(PROMPTS)
    with torch.no_grad():
        out = model.generate(
            **encoded,
            pixel_values=images,
            max_new_tokens=GREEDY.max_new_tokens,
            do_sample=False,
            pad_token_id=PAD,
        )
    for row, ids in zip(out[:, encoded.input_ids.shape[1] :].tolist(), dense, strict=True):
        assert (row[: row.index(EOS)] if EOS in row else row) == ids
    assert prune_generate(adapter, image_batch(images), "none", gen=GREEDY).texts == adapter.decode(dense)


@pytest.fixture(scope="module")
def maps(adapter: LlavaAdapter, images: torch.Tensor) -> torch.Tensor:
    return extract_maps(adapter, image_batch(images), ANSWERS)


@pytest.mark.parametrize(
    ("method", "layer"),
    [("random", 1), ("fastv", 2), ("divprune", 0), ("fastervlm", 0), ("oracle", 2), ("oracle+sap", 1)],
)
def test_batch_equals_one_by_one(
    adapter: LlavaAdapter, images: torch.Tensor, maps: torch.Tensor, method: str, layer: int
) -> None:
    budget = {"alpha": [0.5, 0.8, 0.3]} if method.endswith("+sap") else {"keep": [3, 9, 13]}
    together = prune_generate(
        adapter, image_batch(images), method, layer=layer, maps=maps, gen=GREEDY, **budget
    )
    for row in range(len(PROMPTS)):
        alone = prune_generate(
            adapter,
            image_batch(images, [row]),
            method,
            layer=layer,
            maps=maps[row : row + 1],
            gen=GREEDY,
            **{k: v[row : row + 1] for k, v in budget.items()},
        )
        assert alone.ids[0] == together.ids[row]
        assert alone.kept_units[0] == together.kept_units[row]
    if "keep" in budget:
        assert together.kept_units == budget["keep"]


def test_fastervlm_keeps_the_top_cls_tokens(adapter: LlavaAdapter, images: torch.Tensor) -> None:
    batch = image_batch(images)
    inputs = adapter.build_inputs(batch)
    plan = pruning_plan(adapter, batch, inputs, "fastervlm", keep=4)
    decoder = PrunedDecoder(adapter.language_model, plan)
    decoder.prefill(inputs.inputs_embeds, inputs.attention_mask)
    top = faster_vlm_scores(adapter, images).topk(4, dim=1).indices.sort(dim=1).values
    assert torch.equal(decoder.report.kept_visual[:, :4], top)


def test_removal_equals_official_masking(adapter: LlavaAdapter, images: torch.Tensor) -> None:
    inputs = adapter.build_inputs(image_batch(images))
    scores = torch.randn(len(PROMPTS), N_IMAGE, generator=torch.Generator().manual_seed(3))
    plan = PruningPlan(2, inputs.visual_start, N_IMAGE, 1, scores=scores, keep=torch.tensor([2, 7, 11]))
    pruned = PrunedDecoder(adapter.language_model, plan)
    pruned_ids = generate(pruned, inputs.inputs_embeds, inputs.attention_mask, GREEDY, EOS, BOS)
    kept = pruned.report.kept_visual
    keep_visual = torch.zeros(len(PROMPTS), N_IMAGE, dtype=torch.bool)
    for row in range(len(PROMPTS)):
        keep_visual[row, kept[row][kept[row] >= 0]] = True
    masked = MaskedDecoder(adapter.language_model, 2, inputs.visual_start, keep_visual)
    pruned_logits, _ = PrunedDecoder(adapter.language_model, plan).prefill(
        inputs.inputs_embeds, inputs.attention_mask
    )
    masked_logits, _ = masked.prefill(inputs.inputs_embeds, inputs.attention_mask)
    torch.testing.assert_close(pruned_logits, masked_logits, rtol=1e-4, atol=1e-4)
    assert generate(masked, inputs.inputs_embeds, inputs.attention_mask, GREEDY, EOS, BOS) == pruned_ids


def test_extract_maps_equal_eager_attention(
    adapter: LlavaAdapter, images: torch.Tensor, maps: torch.Tensor
) -> None:
    inputs = adapter.build_inputs(image_batch(images), ANSWERS)
    llm = adapter.language_model
    llm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = llm.model(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=position_ids_from_mask(inputs.attention_mask),
                output_attentions=True,
            )
    finally:
        llm.set_attn_implementation("sdpa")
    mean = torch.stack(out.attentions).mean(dim=(0, 2))  # layers, heads -> [B, T, T]
    for row in range(len(PROMPTS)):
        start = int(inputs.visual_start[row])
        expected = mean[row, int(inputs.text_start[row]) :, start : start + N_IMAGE].mean(0)
        torch.testing.assert_close(maps[row], expected, rtol=1e-5, atol=1e-6)
    assert adapter.model.config.text_config._attn_implementation == "sdpa"


def test_faster_vlm_scores_equal_eager_cls_attention(adapter: LlavaAdapter, images: torch.Tensor) -> None:
    scores = faster_vlm_scores(adapter, images)
    tower = adapter.vision_tower
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = tower(images, output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")
    expected = attentions[adapter.model.config.vision_feature_layer][:, :, 0, 1:].mean(1)
    assert scores.shape == (len(PROMPTS), N_IMAGE)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert tower.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("vision", "strategy", "message"),
    [("clip", "full", "vision_feature_select_strategy"), ("siglip", "default", "no \\[CLS\\] token")],
)
def test_fastervlm_needs_a_cls_token(vision: str, strategy: str, message: str) -> None:
    adapter = LlavaAdapter(tiny_llava(vision, strategy), tiny_tokenizer())
    images = torch.randn(1, 3, 56, 56)
    with pytest.raises(ValueError, match=message):
        faster_vlm_scores(adapter, images)
    with pytest.raises(ValueError, match=message):
        prune_generate(adapter, ImageBatch(PROMPTS[:1], images), "fastervlm", keep=2, gen=GREEDY)


def test_bad_requests_are_refused(adapter: LlavaAdapter, images: torch.Tensor) -> None:
    batch = image_batch(images)
    with pytest.raises(ValueError, match="takes keep"):
        prune_generate(adapter, batch, "random", gen=GREEDY)
    with pytest.raises(ValueError, match="layer >= 1"):
        prune_generate(adapter, batch, "fastv", keep=2, layer=0, gen=GREEDY)
    with pytest.raises(ValueError, match="maps of shape"):
        prune_generate(adapter, batch, "oracle", keep=2, gen=GREEDY)
    with pytest.raises(ValueError, match="image token once"):
        adapter.build_inputs(ImageBatch(["USER: <image> <image> w1"], images[:1]))
