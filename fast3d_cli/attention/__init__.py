"""Attention capture: the target model's all-layer attention over the visual tokens (spec §3).

Exports load lazily (no torch until one is used)."""

from fast3d_cli._lazy import lazy_exports

_EXPORTS = {
    "AttentionCapture": "capture",
    "CaptureResult": "capture",
    "aggregate_maps": "maps",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
