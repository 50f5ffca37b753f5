"""A tiny LLaVA trained on drawn shapes: does FasterVLM's [CLS] attention keep the tokens that matter?

No trained LLaVA ships with fast3d, so this script makes one small enough for a CPU. Each picture is a 6 x 6
grid of 14-pixel patches of dim noise with three shapes (a square, a ring and a plus, each red, green, blue
or yellow) in three cells; a question asks the color of one shape, so the answer is in one of the 36 image
tokens (as far as the vision tower keeps patches local). Training has two phases, like LLaVA's: a
CLIP-style vision tower learns to name every shape's color from its pooled [CLS] output (which gives its
[CLS] token a reason to attend to the shapes, as CLIP's contrastive training does), then the projector and
a small Llama of a LlavaForConditionalGeneration learn the QA with the language-model loss, the tower frozen.
The checkpoint and a held-out QA file are written in the formats of docs/llava.md, and
``fast3d eval --model-family llava`` scores dense, FasterVLM (both placements) and random pruning at
FasterVLM's reduction ratios (75 / 90 / 95 %: 9 / 4 / 2 of the 36 tokens).

    python benchmarks/llava_shapes.py                  # ~4 minutes on 2 busy CPU cores
    python benchmarks/llava_shapes.py --quick          # a smoke run (untrained numbers)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ensure_project_importable, environment, write_result

GRID, PATCH = 6, 14
SIZE = GRID * PATCH
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("square", "ring", "plus")
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:"]
WORDS = [*SPECIAL, "what", "color", "is", "the", *COLORS, *SHAPES]
PAD, UNK, BOS, EOS, IMAGE = range(5)


def question(shape: str) -> str:
    return f"what color is the {shape}"


def draw(rng: np.random.Generator) -> tuple[np.ndarray, tuple[str, ...]]:
    """One picture (uint8 [SIZE, SIZE, 3]): every shape once, each in its own cell with a random color;
    returns it with the colors in SHAPES order."""
    image = rng.integers(0, 70, size=(SIZE, SIZE, 3), dtype=np.uint8)
    colors = tuple(str(c) for c in rng.choice(list(COLORS), size=len(SHAPES)))
    cells = rng.choice(GRID * GRID, size=len(SHAPES), replace=False)
    for shape, color, cell_index in zip(SHAPES, colors, cells, strict=True):
        row, col = divmod(int(cell_index), GRID)
        block = image[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH]
        block[_stencil(shape)] = COLORS[color]
    return image, colors


def _stencil(shape: str) -> np.ndarray:
    cell = np.zeros((PATCH, PATCH), dtype=bool)
    if shape == "square":
        cell[2:-2, 2:-2] = True
    elif shape == "ring":
        cell[1:-1, 1:-1] = True
        cell[4:-4, 4:-4] = False
    else:
        cell[5:-5, 1:-1] = cell[1:-1, 5:-5] = True
    return cell


def dataset(n_pictures: int, seed: int) -> list[tuple]:
    """(picture index, picture, question, answer, colors) rows: each picture is asked the color of each
    shape, so each answer is in one of the 36 image tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_pictures):
        image, colors = draw(rng)
        for shape, color in zip(SHAPES, colors, strict=True):
            rows.append((index, image, question(shape), color, colors))
    return rows


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
    )  # fmt: skip


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(do_resize=False, do_center_crop=False)  # CLIP normalisation only


def pixels(processor: Any, images: list[np.ndarray]):
    return processor(images=images, return_tensors="pt").pixel_values


def build_model(args: argparse.Namespace):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    width = args.hidden_size
    vision = CLIPVisionConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=args.vision_layers,
        num_attention_heads=4, image_size=SIZE, patch_size=PATCH,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=args.text_layers, num_attention_heads=4, num_key_value_heads=4,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    return LlavaForConditionalGeneration(config)


def train_vision(model: Any, rows: list, processor: Any, args: argparse.Namespace) -> list[float]:
    """Phase 1: the tower names every shape's color from its pooled [CLS] output (CLIP's role: the [CLS]
    token must gather what the shapes' patches show)."""
    import torch

    tower = model.model.vision_tower
    heads = torch.nn.Linear(tower.config.hidden_size, len(SHAPES) * len(COLORS))
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=args.lr)
    pictures = rows[:: len(SHAPES)]  # one row per picture
    rng = np.random.default_rng(args.seed)
    palette = list(COLORS)
    losses = []
    for _ in range(args.vision_steps):
        batch = [pictures[i] for i in rng.integers(0, len(pictures), args.batch)]
        logits = heads(tower(pixels(processor, [b[1] for b in batch])).pooler_output)
        target = torch.tensor([[palette.index(c) for c in b[4]] for b in batch])
        loss = torch.nn.functional.cross_entropy(logits.view(-1, len(COLORS)), target.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        report("vision", losses)
    return losses


def train_llava(model: Any, rows: list, processor: Any, tok: Any, args: argparse.Namespace) -> list[float]:
    """Phase 2: the projector and the language model on "USER: <image>\\n{question} ASSISTANT: {answer}</s>"
    (answer loss), the tower frozen as LLaVA's CLIP is."""
    import torch

    from fast3d_cli.models.llava_inputs import PROMPT_TEMPLATE

    model.model.vision_tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    n_image = GRID * GRID
    rng = np.random.default_rng(args.seed + 1)
    losses = []
    for _ in range(args.llava_steps):
        batch = [rows[i] for i in rng.integers(0, len(rows), args.batch)]
        ids, labels = [], []
        for _, _, text, answer, _ in batch:
            prompt = PROMPT_TEMPLATE.format(visual=" ".join(["<image>"] * n_image), question=text)
            prompt_ids = tok(prompt).input_ids
            answer_ids = [*tok(answer, add_special_tokens=False).input_ids, EOS]
            ids.append(prompt_ids + answer_ids)
            labels.append([-100] * len(prompt_ids) + answer_ids)
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([[PAD] * (width - len(i)) + i for i in ids])
        label_ids = torch.tensor([[-100] * (width - len(lab)) + lab for lab in labels])
        mask = (torch.arange(width)[None] >= torch.tensor([width - len(i) for i in ids])[:, None]).long()
        out = model(
            input_ids=input_ids, attention_mask=mask, pixel_values=pixels(processor, [b[1] for b in batch]),
            labels=label_ids,
        )  # fmt: skip
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        report("llava", losses)
    return losses


def report(phase: str, losses: list[float]) -> None:
    if len(losses) % 100 == 0:
        print(f"{phase} step {len(losses)}: loss {np.mean(losses[-100:]):.4f}", file=sys.stderr, flush=True)


def write_qa(rows: list, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for number, (index, image, text, answer, _) in enumerate(rows):
        name = f"img{index:04d}.npy"
        if not (folder / name).exists():
            np.save(folder / name, image)
        lines.append(json.dumps({"id": number, "image": name, "question": text, "answers": [answer]}))
    path = folder / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate(model_dir: Path, qa: Path, out: Path, *options: str) -> dict[str, Any]:
    from fast3d_cli.cli.app import run

    args = [
        "eval",
        "--model-family",
        "llava",
        "--model",
        str(model_dir),
        "--qa-file",
        str(qa),
        "--device",
        "cpu",
    ]
    args += ["--num-beams", "1", "--max-new-tokens", "3", "--repetition-penalty", "1", "-b", "32"]
    code = run([*args, "-o", str(out), "--overwrite", *options])
    if code != 0:
        raise RuntimeError(f"fast3d eval {' '.join(options)} failed with exit code {code}")
    return json.loads((out / "metrics.json").read_text())["metrics"]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-pictures", type=int, default=4000)
    parser.add_argument("--eval-pictures", type=int, default=150)
    parser.add_argument("--vision-steps", type=int, default=600)
    parser.add_argument("--llava-steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=3)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/llava_shapes"))
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--out", default="llava_shapes")
    parser.add_argument("--ratios", default="75,90,95", help="FasterVLM's reduction ratios (percent)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few pictures (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_pictures, args.eval_pictures, args.vision_steps, args.llava_steps = 64, 8, 2, 2
        args.batch, args.ratios = 8, "90"

    ensure_project_importable()
    import torch

    from fast3d_cli.sample_model.train import flush_denormals

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    with flush_denormals():  # restored afterwards: callers in the same process may need IEEE subnormals
        return run(args)


def run(args: argparse.Namespace) -> Path:
    """Train the toy LLaVA, evaluate dense, FasterVLM and random pruning, write the result JSON."""
    started = time.perf_counter()
    processor, tok = image_processor(), tokenizer()
    train_rows = dataset(args.train_pictures, args.seed)
    eval_rows = dataset(args.eval_pictures, args.seed + 1000)
    model = build_model(args).train()
    vision_losses = train_vision(model, train_rows, processor, args)
    llava_losses = train_llava(model, train_rows, processor, tok, args)
    trained_s = time.perf_counter() - started

    model_dir = args.work_dir / "model"
    model.eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    qa = write_qa(eval_rows, args.work_dir / "qa")
    n_visual = GRID * GRID
    runs: dict[str, Any] = {"dense": evaluate(model_dir, qa, args.work_dir / "dense")}
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for name, options in {
            "fastervlm": ["--method", "fastervlm"],
            "fastervlm_renumbered": ["--method", "fastervlm", "--renumber-positions"],
            "random": ["--method", "random"],
        }.items():
            runs[f"{name}@{ratio:g}"] = evaluate(
                model_dir, qa, args.work_dir / f"{name}-{ratio:g}", *options, "--ratio", f"{ratio:g}"
            )
    payload = {
        "benchmark": "llava_shapes",
        "environment": environment("cpu"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "layout": {"image_tokens": n_visual, "eval_questions": len(eval_rows)},
        "training": {
            "seconds": round(trained_s, 1),
            "vision_loss_first_last": [vision_losses[0], float(np.mean(vision_losses[-20:]))],
            "llava_loss_first_last": [llava_losses[0], float(np.mean(llava_losses[-20:]))],
        },
        "result": {
            name: {k: round(v, 4) for k, v in metrics.items() if k in ("[image_qa] EM1", "mean_kept_tokens")}
            for name, metrics in runs.items()
        },
        "note": "a toy: one informative token in 36, CPU-trained; not a measure of FasterVLM on real LLaVA",
    }
    return write_result(args.out, payload, args.out_dir)


if __name__ == "__main__":
    print(main())
