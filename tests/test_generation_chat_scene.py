"""Generation through the full Chat-Scene input path: a batch of N equals N batches of 1."""

from __future__ import annotations

import pytest

from fast3d_cli.data import SceneBank, load_samples
from fast3d_cli.evaluation.runner import generate_answers
from fast3d_cli.generation import GenerationConfig


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_equals_singles(tiny_model, data_config, num_beams: int) -> None:
    samples = [
        *load_samples(data_config, "scanrefer", "val")[:2],
        *load_samples(data_config, "sqa3d", "val")[:1],
        *load_samples(data_config, "scan2cap", "val")[:1],
    ]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=num_beams, max_new_tokens=8)
    together = generate_answers(tiny_model, bank, samples, config).texts
    alone = [generate_answers(tiny_model, bank, [s], config).texts[0] for s in samples]
    assert together == alone
    assert all(isinstance(text, str) for text in together)
