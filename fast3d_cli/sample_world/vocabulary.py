"""Object classes, colours and prompt templates of the sample world."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectClass:
    name: str
    plural: str
    size: tuple[float, float, float]  # mean box size (x, y, z) in metres
    elevation: float = 0.0  # height of the box bottom above the floor
    sittable: bool = False
    weight: float = 1.0  # how often it appears


CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("chair", "chairs", (0.55, 0.55, 0.9), sittable=True, weight=4.0),
    ObjectClass("table", "tables", (1.4, 0.8, 0.75), weight=2.0),
    ObjectClass("desk", "desks", (1.2, 0.6, 0.75), weight=1.2),
    ObjectClass("bed", "beds", (2.0, 1.6, 0.6), sittable=True, weight=0.6),
    ObjectClass("sofa", "sofas", (2.0, 0.9, 0.8), sittable=True, weight=0.8),
    ObjectClass("cabinet", "cabinets", (0.8, 0.5, 1.0), weight=1.5),
    ObjectClass("door", "doors", (0.9, 0.12, 2.0), weight=1.0),
    ObjectClass("window", "windows", (1.2, 0.12, 1.2), elevation=0.9, weight=1.0),
    ObjectClass("bookshelf", "bookshelves", (1.0, 0.35, 1.8), weight=0.8),
    ObjectClass("picture", "pictures", (0.6, 0.06, 0.5), elevation=1.4, weight=1.0),
    ObjectClass("lamp", "lamps", (0.3, 0.3, 1.5), weight=1.0),
    ObjectClass("trash can", "trash cans", (0.35, 0.35, 0.5), weight=1.2),
    ObjectClass("monitor", "monitors", (0.55, 0.2, 0.4), elevation=0.75, weight=1.0),
    ObjectClass("pillow", "pillows", (0.5, 0.35, 0.15), elevation=0.5, weight=1.2),
    ObjectClass("box", "boxes", (0.4, 0.4, 0.3), weight=1.2),
    ObjectClass("sink", "sinks", (0.6, 0.5, 0.3), elevation=0.6, weight=0.6),
    ObjectClass("toilet", "toilets", (0.4, 0.7, 0.8), sittable=True, weight=0.5),
    ObjectClass("refrigerator", "refrigerators", (0.8, 0.7, 1.8), weight=0.5),
    ObjectClass("curtain", "curtains", (1.5, 0.12, 2.0), weight=0.7),
    ObjectClass("plant", "plants", (0.4, 0.4, 0.8), weight=0.8),
    ObjectClass("backpack", "backpacks", (0.35, 0.25, 0.45), weight=0.7),
    ObjectClass("stool", "stools", (0.4, 0.4, 0.6), sittable=True, weight=0.8),
)

COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "white", "black", "brown", "gray")

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

SCANREFER_PROMPTS: tuple[str, ...] = (
    'According to the given description, "{desc}", please provide the ID of the object that closely '
    "matches this description.",
    'Please provide the ID of the object that best matches the description: "{desc}".',
    'Which object ID corresponds to the description "{desc}"?',
    'Identify the object described as "{desc}" and give its ID.',
    'Find the object that matches this description: "{desc}". What is its ID?',
    'Here is a description of an object: "{desc}". Provide the ID of the object.',
    'Locate the object according to the description "{desc}" and answer with its ID.',
    'Based on the description "{desc}", what is the ID of the object?',
    'What is the ID of the object that fits the description "{desc}"?',
)

MULTI3DREF_PROMPTS: tuple[str, ...] = (
    'Are there any objects fitting the description of "{desc}"? If so, kindly provide the IDs for those '
    "objects.",
    'Do any objects match the description of "{desc}"? If they do, please share the IDs of those objects.',
    'Is there anything that matches the description "{desc}"? If yes, please share the IDs of those objects.',
    'Are there objects that correspond to the description "{desc}"? If there are, kindly list their IDs.',
    'Does anything fit the description of "{desc}"? If it does, could you list the IDs for those objects?',
    'Are there any objects described as "{desc}"? If there are, please provide the IDs for those objects.',
    'Have any objects been described as "{desc}"? If so, please share the IDs of those objects.',
    'Do any objects meet the criteria of the description "{desc}"? If they do, kindly provide the IDs.',
    'Are there objects that can be described as "{desc}"? If so, could you provide their IDs?',
    'Is there any object fitting the description "{desc}"? If yes, please give the IDs of those objects.',
)

SCAN2CAP_PROMPTS: tuple[str, ...] = (
    "Develop a description of the object {obj} in the room.",
    "Describe the object {obj} in detail.",
    "Please provide a description of the object {obj} in this scene.",
    "What does the object {obj} look like? Describe it.",
    "Give a detailed description of {obj} and where it is.",
    "Write a short description of the object {obj}.",
    "Can you describe the object {obj} in the room?",
    "Describe {obj} and its surroundings.",
    "Tell me about the object {obj} in the scene.",
    "Provide a caption for the object {obj}.",
)

QA_SUFFIX = " Answer the question using a single word or phrase."

REGIONS: tuple[str, ...] = ("in corner of room", "against wall of room", "in middle of room")
"""Where an object stands in its room (ScanQA-style answers: no articles, which the metric would strip)."""

OBJ_ALIGN_PROMPTS: tuple[str, ...] = (
    "What are the objects {ids}?",
    "Describe the objects {ids}.",
    "Name the objects {ids} and their colors.",
    "Tell me what {ids} are.",
)
