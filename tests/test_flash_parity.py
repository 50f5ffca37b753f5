"""flash-attn parity (GPU only): pruned inference and attention capture give what SDPA gives, within bf16
tolerance. Skipped cleanly without CUDA or without the flash-attn package."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="flash-attn parity needs a CUDA device and the flash-attn package",
)


def tiny_llama(impl: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=1024,
    )  # fmt: skip
    return LlamaForCausalLM._from_config(config, attn_implementation=impl, dtype=torch.bfloat16).cuda().eval()


def batch(n: int = 3):
    gen = torch.Generator().manual_seed(1)
    lengths = [60, 52, 57][:n]
    width = max(lengths)
    embeds = torch.zeros(n, width, 256)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        embeds[i, width - length :] = torch.randn(length, 256, generator=gen)
        mask[i, width - length :] = 1
    visual_start = torch.tensor([width - length + 3 for length in lengths])
    return embeds.cuda().bfloat16(), mask.cuda(), visual_start.cuda()


@pytest.mark.parametrize(("layer", "fastv"), [(0, False), (2, False), (2, True)])
def test_pruned_inference_flash_equals_sdpa(layer: int, fastv: bool) -> None:
    from fast3d_cli.generation import GenerationConfig, generate
    from fast3d_cli.pruning.engine import PrunedDecoder, PruningPlan

    sdpa, flash = tiny_llama("sdpa"), tiny_llama("flash_attention_2")
    flash.load_state_dict(sdpa.state_dict())
    embeds, mask, visual_start = batch()
    scores = None if fastv else torch.randn(3, 10, generator=torch.Generator().manual_seed(2)).cuda()

    def plan() -> PruningPlan:
        return PruningPlan(layer, visual_start, 10, 3, scores=scores, keep=torch.tensor([2, 5, 0]).cuda())

    a_logits, _ = PrunedDecoder(sdpa, plan()).prefill(embeds, mask)
    b_logits, _ = PrunedDecoder(flash, plan()).prefill(embeds, mask)
    assert (a_logits - b_logits).abs().max() <= 5e-2 * a_logits.abs().max()
    config = GenerationConfig(num_beams=1, max_new_tokens=4, repetition_penalty=1.0)
    a = generate(PrunedDecoder(sdpa, plan()), embeds, mask, config, eos_token_id=-1, bos_token_id=1)
    b = generate(PrunedDecoder(flash, plan()), embeds, mask, config, eos_token_id=-1, bos_token_id=1)
    assert sum(x == y for x, y in zip(a, b, strict=True)) >= 2  # bf16 ties may flip one row


def test_attention_capture_flash_equals_sdpa() -> None:
    from fast3d_cli.attention.capture import AttentionCapture, capturing

    model = tiny_llama("sdpa")
    embeds, mask, visual_start = batch()
    results = {}
    for impl in ("sdpa", "flash_attention_2"):
        model.set_attn_implementation(impl)
        capture = AttentionCapture(40, visual_start, 12)
        with torch.no_grad(), capturing(model, capture):
            model(inputs_embeds=embeds, attention_mask=mask)
        results[impl] = capture.result().layer_sum
    assert torch.allclose(results["sdpa"], results["flash_attention_2"], atol=2e-2, rtol=5e-2)
