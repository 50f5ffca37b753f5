"""The rows of the Fast3D paper's comparison table, scaled to a target model's depth.

The paper (spec §5.7) prunes a 32-layer model at (K, R) = (16, 35%), (6, 65%) and (2, 90%) for FastV and GAP,
and at K = 0 for GAP+SAP. A model with L layers gets K = round(K_paper * L / 32); at that K the kept count is
the one giving the same layer-averaged ratio (``ratio`` in :class:`~fast3d_cli.pruning.PruningSettings`).
Where the layer-averaged ratio cannot be reached at that K (a shallow model at 90%), the row keeps the
paper's input-level budget instead (10 of 100 objects) and says so in its label. FastV needs one layer's
attention, so it never prunes before layer 1.

``demo`` and ``benchmarks/sample_pruning.py`` both build their tables from :func:`paper_rows`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Row = tuple[str, dict[str, Any]]

PAPER_SETTINGS = ((35.0, 16), (65.0, 6), (90.0, 2))  # (layer-averaged pruning %, K) for a 32-layer model
PAPER_DEPTH = 32
KEEP_AT_90 = 10  # objects kept of 100 at 90% input-level pruning


def scaled_layer(paper_layer: int, n_layers: int) -> int:
    return round(paper_layer * n_layers / PAPER_DEPTH)


def reachable(ratio: float, layer: int, n_layers: int) -> bool:
    """Whether pruning from ``layer`` on can remove ``ratio`` % of the visual tokens averaged over layers."""
    return ratio <= 100.0 * (n_layers - layer) / n_layers


def _budget_row(method: str, ratio: float, layer: int, n_layers: int, **extra: Any) -> Row:
    name = {"fastv": "FastV", "gap": "GAP"}[method]
    if reachable(ratio, layer, n_layers):
        return f"{name} {ratio:g}% (K={layer})", {"method": method, "layer": layer, "ratio": ratio, **extra}
    return (
        f"{name} '{ratio:g}%' (K={layer}, {KEEP_AT_90} obj)",
        {"method": method, "layer": layer, "keep": KEEP_AT_90, **extra},
    )


def paper_rows(n_layers: int, pred: Path | Any, maps: Path | Any | None = None) -> list[Row]:
    """dense; FastV and GAP at the scaled 35/65/90% settings; GAP 90% at K = 0; GAP+SAP ~90% (K = 0, the
    alpha recorded in ``pred``); random and DivPrune at 90% (K = 0); the oracle (the target's own extracted
    maps ``maps``, when given) at 90% (K = 0) as the upper reference."""
    rows: list[Row] = [("dense", {"method": "none"})]
    for ratio, paper_layer in PAPER_SETTINGS:
        layer = scaled_layer(paper_layer, n_layers)
        rows.append(_budget_row("fastv", ratio, max(1, layer), n_layers))
        rows.append(_budget_row("gap", ratio, max(1, layer), n_layers, maps=pred))
    rows += [
        ("GAP 90% (K=0)", {"method": "gap", "layer": 0, "ratio": 90.0, "maps": pred}),
        ("GAP+SAP ~90% (K=0)", {"method": "gap+sap", "alpha": "auto", "maps": pred}),
        ("Random 90% (K=0)", {"method": "random", "ratio": 90.0}),
        ("DivPrune 90% (K=0)", {"method": "divprune", "ratio": 90.0}),
    ]
    if maps is not None:
        rows.append(("Oracle 90% (K=0)", {"method": "oracle", "ratio": 90.0, "maps": maps}))
    return rows


def row_slug(options: dict[str, Any]) -> str:
    """A folder name for one row, from its method and budget."""
    if options["method"] == "none":
        return "dense"
    parts = [options["method"], f"k{options.get('layer', 0)}"]
    parts += [f"{key}{options[key]}" for key in ("keep", "ratio", "alpha") if key in options]
    parts += ["skip-padding"] if options.get("skip_padding") else []
    return "-".join(str(p) for p in parts)
