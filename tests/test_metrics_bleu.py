"""BLEU-4 sufficient statistics (spec §7 headline of Scan2Cap and ScanQA) against pycocoevalcap's Bleu(4),
on the sample world's captions: every item kind, whole corpora and resampled corpora."""

import contextlib

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from fast3d_cli.data import load_samples
from fast3d_cli.data.formats import read_json
from fast3d_cli.metrics import (
    BLEU_STAT_FIELDS,
    CaptionScorer,
    bleu_statistics,
    corpus_bleu4,
    strip_sos_eos,
    weighted_bleu4,
)


@pytest.fixture(scope="module")
def scorer():
    with CaptionScorer(use_java=False) as caption_scorer:
        yield caption_scorer


def _caption_corpus(data_config, scorer):
    """Tokenized references (the world's Scan2Cap corpus and QA answers) and candidates of every kind:
    exact references, other items' references, shuffled, 1-3 tokens, and empty."""
    corpus = read_json(data_config.path(data_config.scan2cap_corpus))
    answers = {
        f"qa{i}": list(s.ref_captions) for i, s in enumerate(load_samples(data_config, "scanqa", "val"))
    }
    references = scorer.tokenize({**{k: [strip_sos_eos(r) for r in v] for k, v in corpus.items()}, **answers})
    rng = np.random.default_rng(0)
    keys = list(references)
    candidates = {}
    for i, key in enumerate(keys):
        own, other = references[key][-1].split(), references[keys[(i * 7) % len(keys)]][0].split()
        kind = i % 5
        if kind == 0:
            text = " ".join(own)  # a reference itself
        elif kind == 1:
            text = " ".join(other)  # another item's reference
        elif kind == 2:
            text = " ".join(rng.permutation(own))
        elif kind == 3:
            text = " ".join(own[: 1 + i % 3])  # 1 to 3 tokens
        else:
            text = ""
        candidates[key] = [text]
    return references, candidates


def _pycoco_bleu4(references, candidates):
    with contextlib.redirect_stdout(None):
        return Bleu(4).compute_score(references, candidates, verbose=0)[0][3]


def test_bleu_statistics_reproduce_pycocoevalcap(data_config, scorer):
    references, candidates = _caption_corpus(data_config, scorer)
    keys = list(references)
    stats = bleu_statistics(references, candidates, keys)
    assert stats.shape == (len(keys), len(BLEU_STAT_FIELDS)) == (len(keys), 10)
    lengths = stats[:, 0]
    assert (lengths == 0).any() and ((lengths > 0) & (lengths < 4)).any() and (lengths >= 4).any()
    assert abs(corpus_bleu4(stats.sum(axis=0)) - _pycoco_bleu4(references, candidates)) < 1e-12
    assert (
        abs(weighted_bleu4(stats, np.ones((1, len(keys))))[0] - _pycoco_bleu4(references, candidates)) < 1e-12
    )


def test_bleu_statistics_of_resampled_corpora(data_config, scorer):
    """Integer weights = the corpus with each item repeated that many times (and absent at weight 0)."""
    references, candidates = _caption_corpus(data_config, scorer)
    keys = list(references)
    stats = bleu_statistics(references, candidates, keys)
    rng = np.random.default_rng(1)
    weights = rng.multinomial(len(keys), np.full(len(keys), 1 / len(keys)), size=5)
    short = np.flatnonzero(stats[:, 0] < 4)  # empty and 1-3 token candidates only
    assert len(short) > 1
    weights[0, :] = 0
    weights[0, short] = 2
    values = weighted_bleu4(stats, weights)
    for row, value in zip(weights, values, strict=True):
        expanded_refs, expanded_cands = {}, {}
        for key, count in zip(keys, row, strict=True):
            for copy in range(count):
                expanded_refs[f"{key}#{copy}"] = references[key]
                expanded_cands[f"{key}#{copy}"] = candidates[key]
        assert abs(value - _pycoco_bleu4(expanded_refs, expanded_cands)) < 1e-12


def test_bleu_statistics_fields_of_an_item():
    refs = {"a": ["the red chair is here", "a red chair"]}
    stats = bleu_statistics(refs, {"a": ["red chair"]}, ["a"])
    # testlen 2; closest reflen 3; guesses 2, 1, 0, 0; correct 2, 1, 0, 0
    assert stats.tolist() == [[2, 3, 2, 1, 0, 0, 2, 1, 0, 0]]
    assert bleu_statistics(refs, {"a": [""]}, ["a"]).tolist() == [[0, 3, 0, 0, 0, 0, 0, 0, 0, 0]]
