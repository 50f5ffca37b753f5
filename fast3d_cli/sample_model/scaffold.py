"""Scaffold initialisation: give each hop of the grounding circuit a starting point.

Grounding needs three hops (an object's feature tokens pick up its identifier; the answer row gathers the
prompt's keywords; the answer row matches them against the objects and copies the winner's identifier out).
Each hop gets no gradient until the others work, so training from a plain random init sits on a saddle.
The scaffold sets a few weights of three heads so that each hop starts as a copy of a random subspace:

* binding and grounding heads: value rows = U^T, output columns = 0.1 U (U: random orthonormal, hidden x d);
* gather head: its first d/2 value rows = P^T and output columns = 0.1 P (P: hidden x d/2), the rest zero;
* grounding head's query and key: the rows of its d/2 slowest rotary dimensions = P^T, the others zero, so it
  matches content (the gathered keywords against the objects) and not position.

Everything else keeps the default initialisation, and every scaffolded weight is trained. It is applied
once, at step 0; a resumed run loads its trained weights instead.
"""

from __future__ import annotations

import torch
from torch import nn

from fast3d_cli.sample_model.recipe import HeadRoles


def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator))
    return q


def slow_rotary_dims(head_dim: int) -> list[int]:
    """Within-head indices of the slowest half of the rotary frequencies (HF's rotate_half pairs d, d+h/2)."""
    half = head_dim // 2
    return [*range(half // 2, half), *range(half + half // 2, head_dim)]


def _copy_head(attention: nn.Module, head: int, basis: torch.Tensor, width: int) -> None:
    """Value rows [0, width) of ``head`` read ``basis``; its output columns write 0.1 * basis back."""
    dim = attention.head_dim
    rows = slice(head * dim, head * dim + dim)
    v, o = attention.v_proj.weight, attention.o_proj.weight
    v[rows] = 0.0
    o[:, rows] = 0.0
    v[head * dim : head * dim + width] = basis.T
    o[:, head * dim : head * dim + width] = 0.1 * basis


@torch.no_grad()
def apply_scaffold(llm: nn.Module, roles: HeadRoles, seed: int) -> None:
    """Set the scaffold weights of ``llm`` (a LlamaForCausalLM) in place."""
    generator = torch.Generator().manual_seed(seed)
    layers = llm.model.layers
    hidden = llm.config.hidden_size
    dim = layers[0].self_attn.head_dim
    copy_basis = _orthonormal(hidden, dim, generator)
    match_basis = _orthonormal(hidden, dim // 2, generator)
    for layer, head in (roles.binding, roles.grounding):
        _copy_head(layers[layer].self_attn, head, copy_basis, dim)
    layer, head = roles.gather
    _copy_head(layers[layer].self_attn, head, match_basis, dim // 2)
    layer, head = roles.grounding
    attention = layers[layer].self_attn
    slow = torch.tensor(slow_rotary_dims(dim)) + head * dim
    for proj in (attention.q_proj, attention.k_proj):
        proj.weight[head * dim : head * dim + dim] = 0.0
        proj.weight[slow] = match_basis.T
