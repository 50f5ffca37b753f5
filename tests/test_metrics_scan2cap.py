"""Scan2Cap (spec §6.3): IoU gating, missing corpus items, and the three sos/eos modes."""

import numpy as np
import pytest

from fast3d_cli.metrics import (
    CAPTION_METRICS,
    SOS_EOS_MODES,
    CaptionScorer,
    MetricContext,
    MetricOptions,
    MetricsError,
    compute_metrics,
    strip_sos_eos,
)

GT = np.array([[0, 0, 0, 2, 2, 2], [10, 0, 0, 2, 2, 2], [20, 0, 0, 2, 2, 2]], dtype=np.float32)
PROPOSALS = np.array([[0, 0, 0, 2, 2, 2], [11, 0, 0, 2, 2, 2]], dtype=np.float32)  # IoU ~1 and 1/3
BARE_TOKENS = {"s0|0": ["a brown chair", "the chair is brown"], "s0|1": ["a white table"], "s0|2": ["a lamp"]}
CORPUS = {"s0|0": ["A brown chair.", "The chair is brown."], "s0|1": ["A white table."], "s0|2": ["A lamp."]}
WRAPPED = {key: [f"sos {ref} eos" for ref in refs] for key, refs in CORPUS.items()}


class RecordingScorer(CaptionScorer):
    """Java-free scorer that remembers the tokenized references and candidates of each scoring call."""

    def __init__(self):
        super().__init__(use_java=False)
        self.calls = []

    def score_tokenized(self, references, candidates):
        self.calls.append((dict(references), {key: cands[0] for key, cands in candidates.items()}))
        return super().score_tokenized(references, candidates)


def rec(gt_id, pred_id, pred, refs=()):
    return {"index": 0, "scene_id": "s0", "gt_id": gt_id, "pred_id": pred_id, "qid": 0, "prompt": "describe",
            "pred": pred, "ref_captions": list(refs), "type_info": None}  # fmt: skip


PREDS = [rec(0, 0, "a brown chair"), rec(1, 1, "a white\ntable")]


def run(corpus, mode, preds=PREDS):
    scorer = RecordingScorer()
    context = MetricContext(
        proposal_attributes={"s0": {"objects": ["a", "b"], "locs": PROPOSALS}},
        gt_attributes={"s0": {"objects": ["a", "b", "c"], "locs": GT}},
        scan2cap_corpus=corpus,
        caption_scorer=scorer,
    )
    scores = compute_metrics("scan2cap", preds, context, MetricOptions(scan2cap_sos_eos=mode))
    (refs25, cands25), (refs50, cands50) = scorer.calls
    assert refs25 == refs50
    return scores, refs25, cands25, cands50


def test_official_mode_gates_on_iou_and_fills_missing_items():
    scores, refs, c25, c50 = run(CORPUS, "official")
    assert set(scores) == {f"[scan2cap] {m}@{t}" for m in CAPTION_METRICS for t in ("0.25", "0.50")}
    assert refs == BARE_TOKENS
    # IoU(P1, GT1) = 1/3: kept at 0.25, "sos eos" at 0.50; s0|2 has no prediction: "sos eos".
    assert c25 == {"s0|0": "sos a brown chair eos", "s0|1": "sos a white table eos", "s0|2": "sos eos"}
    assert c50 == {"s0|0": "sos a brown chair eos", "s0|1": "sos eos", "s0|2": "sos eos"}
    assert scores["[scan2cap] CIDEr@0.25"] > scores["[scan2cap] CIDEr@0.50"]


def test_official_mode_keeps_corpus_and_prediction_as_they_are():
    _, refs, c25, _ = run(WRAPPED, "official", [rec(0, 0, "sos a brown chair eos")])
    assert refs["s0|0"] == ["sos a brown chair eos", "sos the chair is brown eos"]
    assert c25["s0|0"] == "sos sos a brown chair eos eos"


def test_match_corpus_with_bare_references():
    _, refs, c25, c50 = run(CORPUS, "match-corpus")
    assert refs["s0|0"] == ["a brown chair", "the chair is brown"]
    assert c25 == {"s0|0": "a brown chair", "s0|1": "a white table", "s0|2": ""}
    assert c50 == {"s0|0": "a brown chair", "s0|1": "", "s0|2": ""}


def test_match_corpus_with_wrapped_references():
    _, refs, c25, c50 = run(WRAPPED, "match-corpus", [rec(0, 0, "sos a brown chair eos"), PREDS[1]])
    assert refs["s0|1"] == ["sos a white table eos"]
    assert c25 == {"s0|0": "sos a brown chair eos", "s0|1": "sos a white table eos", "s0|2": "sos eos"}
    assert c50["s0|1"] == "sos eos"


def test_match_corpus_rejects_a_mixed_corpus():
    with pytest.raises(MetricsError, match="mixes"):
        run({**CORPUS, "s0|0": ["sos a brown chair eos"]}, "match-corpus")


def test_strip_mode():
    _, refs, c25, c50 = run(WRAPPED, "strip", [rec(0, 0, "sos a brown chair eos"), PREDS[1]])
    assert refs == BARE_TOKENS
    assert c25 == {"s0|0": "a brown chair", "s0|1": "a white table", "s0|2": ""}
    assert c50 == {"s0|0": "a brown chair", "s0|1": "", "s0|2": ""}


def test_wrapping_changes_bleu():
    first, second = "the brown wooden chair next to the desk", "a small white table in the corner"
    corpus = {"s0|0": [first], "s0|1": [second]}
    preds = [rec(0, 0, first), rec(1, 1, second)]  # IoU ~1 and 1/3
    stripped = run(corpus, "strip", preds)[0]
    official = run(corpus, "official", preds)[0]
    assert stripped["[scan2cap] Bleu_4@0.25"] > 0.99
    assert official["[scan2cap] Bleu_4@0.25"] < 0.9  # sos/eos on the candidate side only cost BLEU
    assert stripped["[scan2cap] Bleu_4@0.50"] < 0.5  # second item fails the 0.50 gate


def test_without_corpus_uses_the_records_references():
    preds = [rec(0, 0, "a brown chair", ["A brown chair."]), rec(1, 1, "a white table", ["A table."])]
    _, refs, c25, _ = run(None, "official", preds)
    assert refs == {"s0|0": ["a brown chair"], "s0|1": ["a table"]}
    assert set(c25) == {"s0|0", "s0|1"}


def test_later_duplicate_record_wins():
    _, _, c25, _ = run(CORPUS, "strip", [rec(0, 0, "first"), rec(0, 0, "second")])
    assert c25["s0|0"] == "second"


@pytest.mark.parametrize(
    ("corpus", "preds", "message"),
    [
        (CORPUS, [rec(5, 0, "x")], "not in the Scan2Cap corpus"),
        ({**CORPUS, "s0|5": ["x"]}, [rec(5, 0, "x")], "GT object id 5"),
        (CORPUS, [rec(0, 2, "x")], "proposal id 2"),
        ({"s0|0": []}, [rec(0, 0, "x")], "non-empty"),
        ({}, [rec(0, 0, "x")], "empty"),
        (CORPUS, [], "no scan2cap predictions"),
    ],
)
def test_errors(corpus, preds, message):
    with pytest.raises(MetricsError, match=message):
        run(corpus, "official", preds)


def test_mode_names_and_helpers():
    assert set(SOS_EOS_MODES) == {"official", "match-corpus", "strip"}
    with pytest.raises(MetricsError, match="scan2cap_sos_eos"):
        MetricOptions(scan2cap_sos_eos="wrap")
    assert strip_sos_eos("SOS a  chair EOS") == "a chair"
    assert strip_sos_eos("sos eos") == ""
    assert strip_sos_eos("chaos eos sos") == "chaos eos sos"
