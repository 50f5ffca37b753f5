"""Start a GAP network from the target model whose attention it learns to predict.

The official GAP starts from a pretrained RoBERTa, so it knows words before it sees a single map. A GAP
trained from scratch on the sample world (72 train scenes) does not: it fits the training scenes and finds
the evidence objects of new scenes poorly. ``init_from_target`` gives it the target model's knowledge
instead, in the two places the GAP's input meets it:

- the text encoder's word embeddings are the target's token embeddings (same tokenizer, same width);
- the object projector is the least-squares linear map from an object's raw (3D, 2D) features to the sum of
  the target's two feature tokens for it (the target projects L2-normalised features through two MLPs, so
  the fit is approximate; its R² is reported).

Starting the object-id embeddings from the target's identifier tokens was tried and made the GAP worse on the
train holdout (KL 0.85 against 0.37, Scan2Cap top-10 mass 0.59 against 0.90), so they keep their default.

Everything else (the CMT layers, the heads, the text encoder's layers) starts as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fast3d_cli.errors import UserError


def check_target_width(target_dir: Path, config: Any) -> None:
    """Refuse (one line) a target model whose hidden size is not the GAP's and its text encoder's."""
    import json

    try:
        text_config = json.loads((Path(target_dir) / "config.json").read_text())["text_config"]
        width = int(text_config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--init-from-target: cannot read the model config in {target_dir}: {err}") from None
    widths = {"the GAP": config.hidden_size, "its text encoder": config.text_config.get("hidden_size")}
    wrong = [f"{name} {w}" for name, w in widths.items() if w != width]
    if wrong:
        raise UserError(
            f"--init-from-target needs the GAP as wide as the target model ({width}); "
            f"{', '.join(wrong)} (set both with --gap-config)"
        )


def object_features(bank: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object of the bank's split (its scenes only): raw 3D and 2D features, [N, D3] and [N, D2]."""
    from fast3d_cli.data.formats import feature_key

    scenes = sorted(bank.proposal_attributes)
    candidates = (feature_key(scene, j) for scene in scenes for j in range(bank.config.max_obj_num))
    keys = [k for k in candidates if k in bank.feats_3d and k in bank.feats_2d]
    if not keys:
        raise UserError(f"--init-from-target: no object features for the {bank.split} scenes")
    f3 = torch.stack([bank.feats_3d[k].float().reshape(-1) for k in keys])
    f2 = torch.stack([bank.feats_2d[k].float().reshape(-1) for k in keys])
    return f3, f2


def target_feature_tokens(target: Any, f3: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """[N, H]: the sum of the target's 3D and 2D tokens of each object, in slices of its object list."""
    slots = len(target.obj_token_ids)
    parts = []
    for start in range(0, len(f3), slots):
        tokens = target.object_embeddings(f3[None, start : start + slots], f2[None, start : start + slots])[0]
        parts.append((tokens[1::3] + tokens[2::3]).float().cpu())  # (identifier, 3D, 2D) per object
    return torch.cat(parts)


@torch.no_grad()
def init_from_target(gap: Any, target: Any, bank: Any) -> dict[str, float]:
    """Copy ``target``'s token embeddings into ``gap``'s text encoder and fit its object projector on the
    objects of ``bank`` (see the module docstring); returns what was done, for training.json."""
    embeddings = target.llm.get_input_embeddings().weight.float().cpu()
    words = gap.text_encoder.embeddings.word_embeddings.weight
    if words.shape[1] != embeddings.shape[1]:
        raise UserError(
            f"--init-from-target: text width {words.shape[1]} != target width {embeddings.shape[1]}"
        )
    n_words = min(words.shape[0], embeddings.shape[0])
    words[:n_words] = embeddings[:n_words].to(words)

    f3, f2 = object_features(bank)
    wanted = target_feature_tokens(target, f3, f2)
    inputs = torch.cat([f3, f2, torch.ones(len(f3), 1)], dim=1)
    solution = torch.linalg.lstsq(inputs, wanted).solution
    projector = gap.obj_feat_projector
    if projector.weight.shape != (wanted.shape[1], inputs.shape[1] - 1):
        raise UserError(
            f"--init-from-target: the GAP's object projector is {tuple(projector.weight.shape)}, the target "
            f"gives {(wanted.shape[1], inputs.shape[1] - 1)}"
        )
    projector.weight.copy_(solution[:-1].T)
    projector.bias.copy_(solution[-1])
    residual = ((inputs @ solution - wanted) ** 2).sum()
    r2 = 1.0 - float(residual / ((wanted - wanted.mean(0)) ** 2).sum())
    return {
        "word_embeddings": n_words,
        "objects_fitted": len(f3),
        "object_projector_r2": round(r2, 4),
    }
