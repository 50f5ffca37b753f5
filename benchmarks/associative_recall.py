"""Control for the sample model's budget: can the sample model's Llama learn in-context lookup on CPU?

Grounding ("which <OBJnnn> is the red chair?") and captioning ("what is <OBJ012>?") both need an in-context
binding: a previous-token head that copies an object's identifier into its feature tokens, then a head that
finds the matching token by content and reads what is bound to it. This script trains a stock
``LlamaForCausalLM`` of the sample model's size on the purest form of that skill, multi-query associative
recall: ``k1 v1 k2 v2 ... k12 v12 | kq vq ...``, loss on the recalled values only. Random guessing among the
in-context values scores 1/pairs; a formed binding circuit scores near 100%.

    python benchmarks/associative_recall.py                 # ~6 minutes on 2 CPU cores
    python benchmarks/associative_recall.py --steps 200     # quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, write_result


def _model(args: argparse.Namespace):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=2 * args.keys + args.filler_vocab,
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=1024,
        rope_theta=1e6,
        tie_word_embeddings=True,
        initializer_range=args.init,
    )
    return LlamaForCausalLM(config)


def _batch(args: argparse.Namespace, size: int, generator):
    """Token ids [size, T] and labels (-100 except the recalled values)."""
    import torch

    keys = torch.stack([torch.randperm(args.keys, generator=generator)[: args.pairs] for _ in range(size)])
    values = torch.randint(args.keys, 2 * args.keys, (size, args.pairs), generator=generator)
    filler = torch.randint(
        2 * args.keys, 2 * args.keys + args.filler_vocab, (size, args.prefix), generator=generator
    )
    asked = torch.stack(
        [torch.randperm(args.pairs, generator=generator)[: args.queries] for _ in range(size)]
    )
    context = torch.stack([keys, values], -1).reshape(size, -1)
    queries = torch.stack([keys.gather(1, asked), values.gather(1, asked)], -1).reshape(size, -1)
    tokens = torch.cat([filler, context, queries], 1)
    labels = torch.full_like(tokens, -100)
    start = args.prefix + 2 * args.pairs
    labels[:, start + 1 :: 2] = tokens[:, start + 1 :: 2]
    return tokens, labels


def _accuracy(model, args: argparse.Namespace, generator) -> float:
    import torch

    tokens, labels = _batch(args, 128, generator)
    with torch.no_grad():
        predicted = model(input_ids=tokens).logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    scored = target != -100
    return ((predicted == target) & scored).sum().item() / scored.sum().item()


def measure(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = _model(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    data, held_out = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 1)
    curve, start = [], time.perf_counter()
    for step in range(args.steps):
        tokens, labels = _batch(args, args.batch, data)
        loss = model(input_ids=tokens, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.probe_every == 0 or step == args.steps - 1:
            model.eval()
            accuracy = _accuracy(model, args, held_out)
            model.train()
            entry = {
                "step": step,
                "sequences_seen": (step + 1) * args.batch,
                "loss": round(loss.item(), 4),
                "recall_accuracy": round(accuracy, 4),
                "elapsed_s": round(time.perf_counter() - start, 1),
            }
            curve.append(entry)
            print(entry, file=sys.stderr, flush=True)
    return {
        "chance_among_context_values": 1 / args.pairs,
        "final_recall_accuracy": curve[-1]["recall_accuracy"],
        "seconds": round(time.perf_counter() - start, 1),
        "curve": curve,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--init", type=float, default=0.02, help="initializer_range (HF default 0.02)")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--prefix", type=int, default=0, help="filler tokens before the pairs")
    parser.add_argument("--filler-vocab", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--out", default="associative_recall_cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "out")}
    payload = {
        "benchmark": "associative_recall",
        "environment": environment("cpu"),
        "settings": settings,
        "result": measure(args),
    }
    path = write_result(args.out, payload, args.out_dir)
    print(path)
    return path


if __name__ == "__main__":
    main()
