"""Annotation rows of the five Chat-Scene tasks for one synthetic scene (formats of spec §2.4)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from fast3d_cli.sample_world.scene import Scene, SceneObject
from fast3d_cli.sample_world.vocabulary import (
    CLASSES,
    COLOURS,
    MULTI3DREF_PROMPTS,
    NUMBER_WORDS,
    OBJ_ALIGN_PROMPTS,
    QA_SUFFIX,
    SCAN2CAP_PROMPTS,
    SCANREFER_PROMPTS,
)

IOU_THRESHOLD = 0.5  # Chat-Scene's train_iou_thres
Row = dict[str, Any]

DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "this is a {colour} {cls}. it is next to the {nb}.",
    "the {colour} {cls} is next to the {nb}.",
    "a {size} {colour} {cls}. it is near the {nb}.",
    "there is a {colour} {cls} close to the {nb}.",
    "it is a {colour} {cls} by the {nb}.",
    "this {cls} is {colour}. it is placed near the {nb}.",
)


def obj_token(proposal_index: int) -> str:
    return f"<OBJ{proposal_index:03}>"


def sentence_case(text: str) -> str:
    """Capitalise the first letter of every sentence (what Chat-Scene does with nltk)."""
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text.strip())


def referable_objects(scene: Scene) -> list[SceneObject]:
    """Objects a description can single out: their (colour, class) pair is unique in the scene."""
    return [o for o in scene.objects if scene.count(o.cls, o.colour) == 1]


def descriptions(rng: np.random.Generator, scene: Scene, obj: SceneObject, n: int) -> list[str]:
    picks = rng.choice(len(DESCRIPTION_TEMPLATES), size=n, replace=False)
    nb = scene.nearest_neighbour(obj).name
    fields = {"colour": obj.colour_name, "cls": obj.name, "nb": nb, "size": obj.size_word}
    return [DESCRIPTION_TEMPLATES[i].format(**fields) for i in picks]


def scene_descriptions(rng: np.random.Generator, scene: Scene) -> dict[int, list[str]]:
    """ScanRefer-style descriptions (2-3 per referable object), shared by ScanRefer and Scan2Cap."""
    return {o.gt_id: descriptions(rng, scene, o, int(rng.integers(2, 4))) for o in referable_objects(scene)}


def scanrefer_rows(
    rng: np.random.Generator, scene: Scene, descs: dict[int, list[str]], split: str
) -> list[Row]:
    rows = []
    for gt_id, texts in descs.items():
        best, iou = scene.best_proposal(gt_id)
        obj = scene.objects[gt_id]
        evidence = sorted({*scene.proposals_of([gt_id]), *([best] if split == "train" else [])})
        extra = {"evidence": evidence, "keywords": [obj.colour_name, obj.name]}
        for text in texts:
            prompt = SCANREFER_PROMPTS[int(rng.integers(len(SCANREFER_PROMPTS)))].format(
                desc=text.rstrip(".!?")
            )
            answer = f"{obj_token(best)}."
            if split == "train":
                if iou >= IOU_THRESHOLD:
                    rows.append(
                        {
                            "scene_id": scene.scene_id,
                            "obj_id": best,
                            "prompt": prompt,
                            "caption": answer,
                            **extra,
                        }
                    )
            else:
                rows.append(
                    {
                        "scene_id": scene.scene_id,
                        "obj_id": gt_id,
                        "prompt": prompt,
                        "ref_captions": [answer],
                        **extra,
                    }
                )
    return rows


def multi3dref_answer(proposal_ids: list[int]) -> str:
    tokens = [obj_token(i) for i in sorted(proposal_ids)]
    if not tokens:
        return "No."
    if len(tokens) == 1:
        return f"Yes. {tokens[0]}."
    if len(tokens) == 2:
        return f"Yes. {tokens[0]} and {tokens[1]}."
    return f"Yes. {', '.join(tokens[:-1])}, and {tokens[-1]}."


def _multi3dref_queries(rng: np.random.Generator, scene: Scene) -> Iterator[tuple[str, list[int], str]]:
    """(phrase, target gt ids, eval_type) candidates covering all five eval types."""
    present = sorted({o.cls for o in scene.objects})
    absent = [c for c in range(len(CLASSES)) if c not in present]
    for cls in present:
        members = scene.members(cls)
        name = CLASSES[cls].name
        if len(members) > 1:
            yield name, [o.gt_id for o in members], "mt"
        else:
            yield name, [members[0].gt_id], "st_wo_d"
        for colour in sorted({o.colour for o in members}):
            targets = [o.gt_id for o in scene.members(cls, colour)]
            kind = "mt" if len(targets) > 1 else "st_w_d" if len(members) > 1 else "st_wo_d"
            yield f"{COLOURS[colour]} {name}", targets, kind
        missing_colours = [c for c in range(len(COLOURS)) if scene.count(cls, c) == 0]
        if missing_colours:
            colour = missing_colours[int(rng.integers(len(missing_colours)))]
            yield f"{COLOURS[colour]} {name}", [], "zt_w_d"
    for cls in rng.permutation(absent)[: max(2, len(present) // 3)]:
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        yield f"{colour} {CLASSES[int(cls)].name}", [], "zt_wo_d"


def multi3dref_rows(rng: np.random.Generator, scene: Scene, split: str) -> list[Row]:
    rows = []
    iou = scene.iou_matrix()
    for phrase, targets, eval_type in _multi3dref_queries(rng, scene):
        if len(targets) > 4:
            continue
        desc = rng.choice(["the {p}", "a {p} in the room", "{p}"]).format(p=phrase)
        prompt = MULTI3DREF_PROMPTS[int(rng.integers(len(MULTI3DREF_PROMPTS)))].format(desc=desc)
        row: Row = {"scene_id": scene.scene_id, "obj_id": 0, "prompt": prompt, "eval_type": eval_type}
        first, _, rest = phrase.partition(" ")
        keywords = [first, rest] if first in COLOURS else [phrase]  # (colour,) class name
        row.update(evidence=scene.proposals_of(targets), keywords=keywords)
        if split == "train":
            best = [int(iou[:, t].argmax()) for t in targets]
            if any(iou[b, t] < IOU_THRESHOLD for b, t in zip(best, targets, strict=True)) or len(
                set(best)
            ) < len(best):
                continue
            row["caption"] = multi3dref_answer(best)
        else:
            row["ref_captions"] = list(targets)
        rows.append(row)
    return rows


def scan2cap_val_matches(scene: Scene, corpus_ids: list[int]) -> dict[int, tuple[int, float]]:
    """Chat-Scene's matching: each proposal picks its best GT (in the corpus); each GT keeps its best."""
    if not corpus_ids:
        return {}
    iou = scene.iou_matrix()[:, corpus_ids]
    matches: dict[int, tuple[int, float]] = {}
    for proposal, column in enumerate(iou.argmax(1)):
        gt_id, value = corpus_ids[int(column)], float(iou[proposal, column])
        if value > 0 and (gt_id not in matches or value > matches[gt_id][1]):
            matches[gt_id] = (proposal, value)
    return matches


def scan2cap_rows(
    rng: np.random.Generator, scene: Scene, descs: dict[int, list[str]], split: str
) -> list[Row]:
    def prompt(proposal: int) -> str:
        return SCAN2CAP_PROMPTS[int(rng.integers(len(SCAN2CAP_PROMPTS)))].format(obj=obj_token(proposal))

    def evidence(proposal: int, gt_id: int) -> list[int]:  # the captioned box and the neighbour it names
        neighbour = scene.nearest_neighbour(scene.objects[gt_id]).gt_id
        return sorted({proposal, *scene.proposals_of([neighbour])})

    rows = []
    if split == "train":
        for gt_id, texts in descs.items():
            best, iou = scene.best_proposal(gt_id)
            if iou < IOU_THRESHOLD:
                continue
            rows += [
                {
                    "scene_id": scene.scene_id,
                    "obj_id": gt_id,
                    "pred_id": best,
                    "prompt": prompt(best),
                    "caption": sentence_case(t),
                    "iou": iou,
                    "evidence": evidence(best, gt_id),
                    "keywords": [obj_token(best)],
                }
                for t in texts
            ]
        return rows
    for gt_id, (proposal, iou) in sorted(scan2cap_val_matches(scene, sorted(descs)).items()):
        rows.append(
            {
                "scene_id": scene.scene_id,
                "obj_id": gt_id,
                "pred_id": proposal,
                "prompt": prompt(proposal),
                "ref_captions": [sentence_case(t) for t in descs[gt_id]],
                "iou": iou,
                "evidence": evidence(proposal, gt_id),
                "keywords": [obj_token(proposal)],
            }
        )
    return rows


def _unique_class_objects(scene: Scene) -> list[SceneObject]:
    return [o for o in scene.objects if scene.count(o.cls) == 1]


def _unique_colour_objects(scene: Scene) -> list[SceneObject]:
    return [o for o in scene.objects if sum(x.colour == o.colour for x in scene.objects) == 1]


# (question, answers with the canonical one first, gt ids the answer depends on, words that name them)
Question = tuple[str, list[str], list[int], list[str]]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _scanqa_questions(rng: np.random.Generator, scene: Scene) -> Iterator[Question]:
    colour_q = [
        "What color is the {c}?",
        "What is the color of the {c}?",
        "What colour is the {c} in the room?",
    ]
    for obj in _unique_class_objects(scene):
        yield _pick(rng, colour_q).format(c=obj.name), [obj.colour_name], [obj.gt_id], [obj.name]
        nb = scene.nearest_neighbour(obj)
        if rng.random() < 0.5:
            where = _pick(rng, ["Where is the {c}?", "Where is the {c} located?"]).format(c=obj.name)
            yield where, [scene.region(obj)], [obj.gt_id], [obj.name]
        else:
            next_to = _pick(rng, ["What is next to the {c}?", "What is the {c} next to?"]).format(c=obj.name)
            yield next_to, [nb.name, CLASSES[nb.cls].plural], [obj.gt_id, nb.gt_id], [obj.name]
    for obj in _unique_colour_objects(scene):
        what = _pick(rng, ["What is the {c} object?", "What is the {c} thing in the room?"])
        answers = [f"{obj.colour_name} {obj.name}", obj.name]
        yield what.format(c=obj.colour_name), answers, [obj.gt_id], [obj.colour_name]
    for cls in sorted({o.cls for o in scene.objects}):
        members = scene.members(cls)
        if 2 <= len(members) <= 5 and rng.random() < 0.6:
            plural = CLASSES[cls].plural
            answers = [NUMBER_WORDS[len(members)], f"{NUMBER_WORDS[len(members)]} {plural}"]
            yield f"How many {plural} are in the room?", answers, [o.gt_id for o in members], [plural]


def _qa_row(
    scene: Scene, prompt: str, answers: list[str], evidence: list[int], keywords: list[str], split: str
) -> Row:
    row: Row = {"scene_id": scene.scene_id, "prompt": prompt}
    if split == "train":
        row["caption"] = answers[0].capitalize() + "."
    else:
        row["ref_captions"] = answers
    return {**row, "evidence": evidence, "keywords": keywords}


def scanqa_rows(rng: np.random.Generator, scene: Scene, split: str) -> list[Row]:
    rows = []
    for question, answers, gt_ids, words in _scanqa_questions(rng, scene):
        row = _qa_row(scene, question + QA_SUFFIX, answers, scene.proposals_of(gt_ids), words, split)
        rows.append({"scene_id": scene.scene_id, "obj_id": gt_ids[0], **row})
    return rows


SQA_TYPES = ("what", "is", "how", "can", "which")


def sqa_type(question: str) -> int:
    first = question.split()[0].lower()
    return SQA_TYPES.index(first) if first in SQA_TYPES else 5


def _situation(rng: np.random.Generator, scene: Scene) -> str:
    a, b = rng.choice(len(scene.objects), size=2, replace=False)
    oa, ob = scene.objects[int(a)], scene.objects[int(b)]
    options = [
        f"I am standing next to the {oa.name} facing the {ob.name}.",
        f"I am standing by the {oa.name}.",
        f"I just walked past the {oa.name} and the {ob.name} is in front of me.",
    ]
    sittable = [o for o in scene.objects if CLASSES[o.cls].sittable]
    if sittable:
        options.append(f"I am sitting on the {sittable[int(rng.integers(len(sittable)))].name}.")
    return options[int(rng.integers(len(options)))]


def _sqa_questions(rng: np.random.Generator, scene: Scene) -> Iterator[Question]:
    present = sorted({o.cls for o in scene.objects})
    uniques = _unique_class_objects(scene)
    for obj in uniques:
        yield f"What color is the {obj.name} in front of me?", [obj.colour_name], [obj.gt_id], [obj.name]
        other = COLOURS[(obj.colour + int(rng.integers(1, len(COLOURS)))) % len(COLOURS)]
        colour = obj.colour_name if rng.random() < 0.5 else other
        answer = "yes" if colour == obj.colour_name else "no"
        yield f"Does the {obj.name} have a {colour} color?", [answer], [obj.gt_id], [obj.name]
    asked = [int(c) for c in present if rng.random() < 0.5]
    absent = [c for c in range(len(CLASSES)) if c not in present]
    asked += [int(c) for c in rng.permutation(absent)[: len(asked)]]  # as many "no" as "yes"
    for cls in sorted(asked):
        members = [o.gt_id for o in scene.members(cls)]
        name = CLASSES[cls].name
        yield f"Is there a {name} in this room?", ["yes" if members else "no"], members, [name]
    for cls in present:
        members = scene.members(cls)
        if 1 <= len(members) <= 5 and rng.random() < 0.6:
            plural = CLASSES[cls].plural
            yield (
                f"How many {plural} are there?",
                [NUMBER_WORDS[len(members)]],
                [o.gt_id for o in members],
                [plural],
            )
    for obj in _unique_colour_objects(scene):
        answer = "yes" if CLASSES[obj.cls].sittable else "no"
        yield f"Can I sit on the {obj.colour_name} object?", [answer], [obj.gt_id], [obj.colour_name]
    distinct = [o for o in uniques if sum(x.colour == o.colour for x in uniques) == 1]
    for _ in range(min(3, len(distinct) // 2)):
        i, j = rng.choice(len(distinct), size=2, replace=False)
        a, b = distinct[int(i)], distinct[int(j)]
        target = a if rng.random() < 0.5 else b
        question = f"Which is {target.colour_name}, the {a.name} or the {b.name}?"
        yield question, [target.name], [a.gt_id, b.gt_id], [target.colour_name, a.name, b.name]


def sqa3d_rows(rng: np.random.Generator, scene: Scene, split: str) -> list[Row]:
    rows = []
    for question, answers, gt_ids, words in _sqa_questions(rng, scene):
        prompt = f"{_situation(rng, scene)} {question}{QA_SUFFIX}"
        row = _qa_row(scene, prompt, answers, scene.proposals_of(gt_ids), words, split)
        rows.append({"scene_id": scene.scene_id, "obj_id": 0, **row, "sqa_type": sqa_type(question)})
    return rows


def _id_list(tokens: list[str]) -> str:
    return tokens[0] if len(tokens) == 1 else f"{', '.join(tokens[:-1])} and {tokens[-1]}"


def obj_align_rows(rng: np.random.Generator, scene: Scene, n_rows: int, max_objects: int = 10) -> list[Row]:
    """Object-alignment training data (Chat-Scene trains on obj_align too): what several <OBJnnn> are.

    Only proposals that localise a real object well answer with its class and colour.
    """
    iou = scene.iou_matrix()
    good = [j for j in range(len(scene.proposals)) if iou[j].max() >= IOU_THRESHOLD]
    rows = []
    for _ in range(n_rows if good else 0):
        k = int(rng.integers(1, min(max_objects, len(good)) + 1))
        picks = sorted(int(j) for j in rng.choice(good, size=k, replace=False))
        objects = [scene.objects[int(iou[j].argmax())] for j in picks]
        tokens = [obj_token(j) for j in picks]
        prompt = OBJ_ALIGN_PROMPTS[int(rng.integers(len(OBJ_ALIGN_PROMPTS)))].format(ids=_id_list(tokens))
        caption = " ".join(
            f"{t} is a {o.colour_name} {o.name}." for t, o in zip(tokens, objects, strict=True)
        )
        rows.append(
            {
                "scene_id": scene.scene_id,
                "obj_id": objects[0].gt_id,
                "prompt": prompt,
                "caption": caption,
                "evidence": picks,
                "keywords": tokens,
            }
        )
    return rows
