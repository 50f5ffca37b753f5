"""Text generation: HF-4.31-faithful greedy/beam search over a swappable prefill/step/select decoder.

Exports load lazily (``GenerationConfig`` needs no torch)."""

from fast3d_cli._lazy import lazy_exports

# eager: the function shares its name with its (torch-free) module, which would otherwise shadow it
from fast3d_cli.generation.postprocess import decode_batch, postprocess  # noqa: F401

_EXPORTS = {
    "GenerationConfig": "config",
    "Decoder": "decoder",
    "DecodeState": "decoder",
    "HFCausalLMDecoder": "decoder",
    "check_left_padded": "decoder",
    "position_ids_from_mask": "decoder",
    "select_state": "decoder",
    "BeamHypotheses": "search",
    "apply_min_length": "search",
    "apply_repetition_penalty": "search",
    "beam_search": "search",
    "generate": "search",
    "greedy_search": "search",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*_EXPORTS, "decode_batch", "postprocess"])
