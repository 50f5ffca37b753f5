"""CaptionScorer: pycocoevalcap with Java (one shared METEOR JVM), and the Java-free fallback."""

import shutil
import subprocess
import warnings

import numpy as np
import pytest

from fast3d_cli.metrics import (
    CAPTION_METRICS,
    CaptionScorer,
    MetricContext,
    MetricOptions,
    compute_metrics,
    fallback_tokenize,
)

HAS_JAVA = shutil.which("java") is not None

REFS = {
    "1": ["a brown wooden chair next to the desk", "the chair is brown"],
    "2": ["a small white table in the corner of the room"],
    "3": ["a tall black lamp beside the bed"],
}
IDENTICAL = {key: refs[0] for key, refs in REFS.items()}
WRONG = {"1": "zebra", "2": "moon river", "3": "quantum"}


@pytest.fixture(scope="module")
def java_scorer():
    if not HAS_JAVA:
        pytest.skip("java is not on the PATH")
    scorer = CaptionScorer()
    yield scorer
    scorer.close()


def test_identical_candidates_score_high_and_print_nothing(java_scorer, capfd):
    scores = java_scorer.score(REFS, IDENTICAL)
    assert set(scores) == set(CAPTION_METRICS)
    assert scores["Bleu_4"] > 0.99
    assert scores["METEOR"] > 0.9
    assert scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["CIDEr"] > 1.0
    assert capfd.readouterr().out == ""  # nothing on stdout, from Python or from Java


def test_wrong_candidates_score_zero(java_scorer, capfd):
    scores = java_scorer.score(REFS, WRONG)
    assert scores["Bleu_4"] < 1e-6
    assert scores["METEOR"] < 0.05
    assert scores["ROUGE_L"] == 0.0
    assert scores["CIDEr"] == 0.0
    assert capfd.readouterr().out == ""


def test_ptb_tokenizer_and_fallback_agree_on_ordinary_text(java_scorer):
    quoted = 'A "TV" -- on the wall; isn\'t it?'
    captions = {"a": ["The Chair, left.", "It's (big)!"], "b": [""], "c": [quoted]}
    tokenized = java_scorer.tokenize(captions)
    assert tokenized == {
        "a": ["the chair left", "it 's -lrb- big -rrb-"],
        "b": [""],
        "c": ["a tv on the wall is n't it"],
    }
    assert {k: [fallback_tokenize(c) for c in caps] for k, caps in captions.items()} == tokenized
    assert java_scorer.tokenize({"x": ["line\nbreak", "car\rriage"]}) == {"x": ["line break", "car riage"]}


def test_meteor_jvm_started_lazily_and_once(java_scorer):
    fresh = CaptionScorer()
    fresh.tokenize({"a": ["no meteor needed"]})
    assert fresh._meteor is None  # tokenizing does not start the METEOR JVM
    java_scorer.score(REFS, IDENTICAL)
    pid = java_scorer._meteor.meteor_p.pid
    java_scorer.score(REFS, WRONG)
    assert java_scorer._meteor.meteor_p.pid == pid


def test_scan2cap_and_scanqa_with_java(java_scorer):
    gt = np.array([[0, 0, 0, 2, 2, 2]], dtype=np.float32)
    context = MetricContext(
        proposal_attributes={"s0": {"objects": ["chair"], "locs": gt}},
        gt_attributes={"s0": {"objects": ["chair"], "locs": gt}},
        scan2cap_corpus={"s0|0": ["sos a brown chair . eos"], "s0|1": ["sos a lamp . eos"]},
        caption_scorer=java_scorer,
    )
    pred = {"scene_id": "s0", "gt_id": 0, "pred_id": 0, "qid": 0, "pred": "a brown chair", "ref_captions": []}
    scores = compute_metrics("scan2cap", [pred], context, MetricOptions())
    assert scores["[scan2cap] METEOR@0.50"] is not None
    # exact item: 1; missing item "sos eos" vs "sos a lamp eos": P = 1, R = 1/2, ROUGE-L (beta 1.2)
    assert scores["[scan2cap] ROUGE_L@0.50"] == pytest.approx((1 + 2.44 * 0.5 / (0.5 + 1.44)) / 2)
    qa = compute_metrics("scanqa", [{**pred, "pred": "Chair.", "ref_captions": ["chair"]}], context)
    assert qa["[scanqa] EM1"] == 1.0
    assert qa["[scanqa] METEOR"] is not None


def _no_subprocess(*args, **kwargs):
    raise AssertionError("no subprocess may be started without java")


def test_fallback_when_java_is_missing(monkeypatch):
    with CaptionScorer(use_java=False) as reference:
        expected = reference.score(REFS, IDENTICAL)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    monkeypatch.setattr(subprocess, "Popen", _no_subprocess)
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    with pytest.warns(RuntimeWarning, match="java not found"):
        scorer = CaptionScorer()
    assert not scorer.uses_java
    scores = scorer.score(REFS, IDENTICAL)
    assert scores["METEOR"] is None
    assert scores == expected
    assert scores["Bleu_4"] > 0.99
    scorer.close()


@pytest.mark.skipif(not HAS_JAVA, reason="java is not on the PATH")
def test_fallback_bleu_cider_rouge_match_java(java_scorer):
    with CaptionScorer(use_java=False) as fallback:
        partly = {"1": "a chair near the desk", "2": "the white table", "3": "a black lamp"}
        for candidates in (IDENTICAL, partly):
            java, pure = java_scorer.score(REFS, candidates), fallback.score(REFS, candidates)
            for name in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):
                assert pure[name] == pytest.approx(java[name], abs=1e-12)


def test_use_java_false_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scorer = CaptionScorer(use_java=False)
    assert not scorer.uses_java


def test_meteor_failure_gives_none(monkeypatch):
    if not HAS_JAVA:
        pytest.skip("java is not on the PATH")
    import pycocoevalcap.meteor.meteor as meteor_module

    def broken_meteor():
        raise FileNotFoundError("java vanished")

    monkeypatch.setattr(meteor_module, "Meteor", broken_meteor)
    scorer = CaptionScorer()
    with pytest.warns(RuntimeWarning, match="METEOR failed"):
        scores = scorer.score(REFS, IDENTICAL)
    assert scores["METEOR"] is None
    assert scores["Bleu_4"] > 0.99
    assert scorer.score(REFS, IDENTICAL)["METEOR"] is None  # not retried


def test_score_tokenized_validates_input():
    scorer = CaptionScorer(use_java=False)
    with pytest.raises(ValueError, match="same item keys"):
        scorer.score_tokenized({"a": ["x"]}, {"b": ["x"]})
    with pytest.raises(ValueError, match="no reference"):
        scorer.score_tokenized({"a": []}, {"a": ["x"]})
    with pytest.raises(ValueError, match="exactly one"):
        scorer.score_tokenized({"a": ["x"]}, {"a": ["x", "y"]})
    with pytest.raises(ValueError, match="no items"):
        scorer.score_tokenized({}, {})


def test_fallback_tokenize_rules():
    assert fallback_tokenize("Hello, World...") == "hello world"
    assert fallback_tokenize("It's 3.5 m; 1,000 o'clock!") == "it 's 3.5 m 1,000 o'clock"
    assert fallback_tokenize("don't (x) [y] {z}") == "do n't -lrb- x -rrb- -lsb- y -rsb- -lcb- z -rcb-"
    assert fallback_tokenize('a "quoted" well-known 50% $5 a&b') == "a quoted well-known 50 % $ 5 a & b"


def test_broken_java_tokenizer_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/nonexistent/bin/java")
    scorer = CaptionScorer()
    with pytest.warns(RuntimeWarning, match="PTB approximation"):
        assert scorer.tokenize({"a": ["The Chair, left."]}) == {"a": ["the chair left"]}


def test_close_stops_the_jvm(java_scorer):  # keep last: it stops the module's shared JVM
    java_scorer.score(REFS, IDENTICAL)
    proc = java_scorer._meteor.meteor_p
    java_scorer.close()
    assert proc.poll() is not None
    java_scorer.close()  # idempotent
