"""Attention capture: the target model's all-layer attention over the visual tokens (spec §3)."""

from fast3d_cli.attention.capture import AttentionCapture, CaptureResult
from fast3d_cli.attention.maps import aggregate_maps

__all__ = ["AttentionCapture", "CaptureResult", "aggregate_maps"]
