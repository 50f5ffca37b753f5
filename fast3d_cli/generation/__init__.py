"""Text generation: HF-4.31-faithful greedy/beam search over a swappable prefill/step/select decoder."""

from fast3d_cli.generation.config import GenerationConfig
from fast3d_cli.generation.decoder import (
    Decoder,
    DecodeState,
    HFCausalLMDecoder,
    check_left_padded,
    position_ids_from_mask,
    select_state,
)
from fast3d_cli.generation.postprocess import decode_batch, postprocess
from fast3d_cli.generation.search import (
    BeamHypotheses,
    apply_min_length,
    apply_repetition_penalty,
    beam_search,
    generate,
    greedy_search,
)

__all__ = [
    "BeamHypotheses",
    "DecodeState",
    "Decoder",
    "GenerationConfig",
    "HFCausalLMDecoder",
    "apply_min_length",
    "apply_repetition_penalty",
    "beam_search",
    "check_left_padded",
    "decode_batch",
    "generate",
    "greedy_search",
    "position_ids_from_mask",
    "postprocess",
    "select_state",
]
