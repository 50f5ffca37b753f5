"""ScanQA (spec §6.5) and SQA3D (spec §6.6): EM / refined EM, the raw-reference quirk, per-type EM."""

import pytest

from fast3d_cli.metrics import CAPTION_METRICS, CaptionScorer, MetricContext, MetricOptions, MetricsError
from fast3d_cli.metrics import compute_metrics as compute


class RecordingScorer(CaptionScorer):
    """Java-free scorer that remembers what it was asked to score."""

    def __init__(self):
        super().__init__(use_java=False)
        self.calls = []

    def score_tokenized(self, references, candidates):
        self.calls.append((dict(references), dict(candidates)))
        return super().score_tokenized(references, candidates)


@pytest.fixture
def scorer():
    with RecordingScorer() as s:
        yield s


def rec(pred, refs, type_info=None, gt_id=5, qid=0):
    return {"index": 0, "scene_id": "s0", "gt_id": gt_id, "pred_id": 0, "qid": qid, "prompt": "q?",
            "pred": pred, "ref_captions": refs, "type_info": type_info}  # fmt: skip


SCANQA = [
    rec("Two.", ["2"]),  # cleaned pred "two"; raw ref "2" -> (0, 0); cleaned ref "two" -> (1, 1)
    rec("tv", ["The TV"]),  # pred "TV"; raw "The TV" -> (0, 1); cleaned "TV" -> (1, 1)
    rec("Brown chair.", ["brown chair", "chair"]),  # (1, 1) either way
    rec("", ["table"]),  # empty -> (0, 0)
]


def test_scanqa_official_compares_with_raw_references(scorer):
    scores = compute("scanqa", SCANQA, MetricContext(caption_scorer=scorer), MetricOptions())
    assert scores["[scanqa] EM1"] == 1 / 4
    assert scores["[scanqa] EM1_refined"] == 2 / 4
    refs, cands = scorer.calls[0]
    assert refs == {"s0_5_0_0": ["2"], "s0_5_0_1": ["the tv"], "s0_5_0_2": ["brown chair", "chair"],
                    "s0_5_0_3": ["table"]}  # fmt: skip
    assert cands == {"s0_5_0_0": ["two"], "s0_5_0_1": ["tv"], "s0_5_0_2": ["brown chair"], "s0_5_0_3": [""]}


def test_scanqa_corrected_cleans_references(scorer):
    options = MetricOptions(scanqa_clean_references=True)
    scores = compute("scanqa", SCANQA, MetricContext(caption_scorer=scorer), options)
    assert scores["[scanqa] EM1"] == 3 / 4
    assert scores["[scanqa] EM1_refined"] == 3 / 4
    refs, _ = scorer.calls[0]
    assert refs["s0_5_0_0"] == ["two"]
    assert refs["s0_5_0_1"] == ["tv"]


def test_scanqa_keys_and_caption_metrics(scorer):
    scores = compute("scanqa", SCANQA, MetricContext(caption_scorer=scorer))
    captions = {f"[scanqa] {m}" for m in CAPTION_METRICS}
    assert set(scores) == {"[scanqa] EM1", "[scanqa] EM1_refined"} | captions
    assert scores["[scanqa] METEOR"] is None  # Java-free scorer
    assert 0 < scores["[scanqa] Bleu_1"] < 1


def test_item_ids_include_the_position(scorer):
    same = [rec("chair", ["chair"]), rec("table", ["chair"])]  # same scene, gt_id and qid
    scores = compute("scanqa", same, MetricContext(caption_scorer=scorer))
    assert scores["[scanqa] EM1"] == 0.5
    _, cands = scorer.calls[0]
    assert cands == {"s0_5_0_0": ["chair"], "s0_5_0_1": ["table"]}


SQA3D = [
    rec("Two.", ["2"], type_info=0),  # refs are cleaned: "two" -> (1, 1)
    rec("chair", ["table"], type_info=0),  # (0, 0)
    rec("brown", ["Brown chair"], type_info=2),  # (0, 1)
    rec("The TV.", ["tv"], type_info="5"),  # "TV" vs "TV" -> (1, 1); type given as a string
]


def test_sqa3d_overall_and_per_type(scorer):
    scores = compute("sqa3d", SQA3D, MetricContext(caption_scorer=scorer))
    assert scores["[sqa3d] EM1"] == 2 / 4
    assert scores["[sqa3d] EM1_refined"] == 3 / 4
    assert scores["[sqa3d] EM_type0"] == 1 / (2 + 1e-10)
    assert scores["[sqa3d] EM_refined_type0"] == 1 / (2 + 1e-10)
    assert scores["[sqa3d] EM_type2"] == 0.0
    assert scores["[sqa3d] EM_refined_type2"] == 1 / (1 + 1e-10)
    assert scores["[sqa3d] EM_type5"] == 1 / (1 + 1e-10)
    for absent in (1, 3, 4):  # no sample: 0 / 1e-10
        assert scores[f"[sqa3d] EM_type{absent}"] == 0.0
        assert scores[f"[sqa3d] EM_refined_type{absent}"] == 0.0
    per_type = {f"[sqa3d] EM_type{t}" for t in range(6)} | {f"[sqa3d] EM_refined_type{t}" for t in range(6)}
    captions = {f"[sqa3d] {m}" for m in CAPTION_METRICS}
    assert set(scores) == {"[sqa3d] EM1", "[sqa3d] EM1_refined"} | per_type | captions
    refs, _ = scorer.calls[0]
    assert refs["s0_5_0_0"] == ["two"]  # cleaned references go to the caption metrics too


@pytest.mark.parametrize("bad_type", [None, 6, "what"])
def test_sqa3d_rejects_unknown_types(scorer, bad_type):
    with pytest.raises(MetricsError, match="type_info"):
        compute("sqa3d", [rec("a", ["a"], type_info=bad_type)], MetricContext(caption_scorer=scorer))


@pytest.mark.parametrize("task", ["scanqa", "sqa3d"])
def test_qa_input_errors(scorer, task):
    context = MetricContext(caption_scorer=scorer)
    with pytest.raises(MetricsError, match="no"):
        compute(task, [], context)
    with pytest.raises(MetricsError, match="ref_captions"):
        compute(task, [rec("a", [], type_info=0)], context)
    with pytest.raises(MetricsError, match="ref_captions"):
        compute(task, [rec("a", "a", type_info=0)], context)
