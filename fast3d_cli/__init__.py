"""fast3d: visual-token pruning for 3D multimodal LLMs."""

__version__ = "0.1.0"
