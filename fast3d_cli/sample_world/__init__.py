"""The synthetic sample world: ScanNet-like scenes and the five Chat-Scene tasks, in the real file formats."""

from fast3d_cli.sample_world.generator import WorldSpec, generate_world

__all__ = ["WorldSpec", "generate_world"]
