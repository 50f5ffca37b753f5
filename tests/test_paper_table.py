"""The paper's table rows, scaled to the target model's depth."""

from __future__ import annotations

from pathlib import Path

from fast3d_cli.evaluation.paper_table import paper_rows, row_slug
from fast3d_cli.pruning.methods import PruningSettings


def test_sample_model_depth_scales_k_and_keeps_10_objects_where_90_percent_is_out_of_reach() -> None:
    rows = dict(paper_rows(4, Path("p.zarr"), Path("m.zarr")))
    assert rows["FastV 35% (K=2)"] == {"method": "fastv", "layer": 2, "ratio": 35.0}
    assert rows["GAP 65% (K=1)"] == {"method": "gap", "layer": 1, "ratio": 65.0, "maps": Path("p.zarr")}
    # at K=1 a 4-layer model removes at most 75% layer-averaged: the paper's input-level budget instead
    assert rows["FastV '90%' (K=1, 10 obj)"] == {"method": "fastv", "layer": 1, "keep": 10}
    assert rows["GAP 90% (K=0)"]["layer"] == 0
    assert rows["GAP+SAP ~90% (K=0)"] == {"method": "gap+sap", "alpha": "auto", "maps": Path("p.zarr")}
    assert rows["Oracle 90% (K=0)"]["maps"] == Path("m.zarr")
    assert {"dense", "Random 90% (K=0)", "DivPrune 90% (K=0)"} <= set(rows)
    for options in rows.values():  # every row is a valid configuration with its own folder
        PruningSettings(**options)
    assert len({row_slug(o) for o in rows.values()}) == len(rows)


def test_a_32_layer_model_gets_the_papers_settings() -> None:
    rows = dict(paper_rows(32, Path("p.zarr")))
    assert rows["FastV 35% (K=16)"]["layer"] == 16
    assert rows["GAP 65% (K=6)"]["ratio"] == 65.0
    assert rows["GAP 90% (K=2)"] == {"method": "gap", "layer": 2, "ratio": 90.0, "maps": Path("p.zarr")}
    assert not any(label.startswith("Oracle") for label in rows)  # no target maps given
