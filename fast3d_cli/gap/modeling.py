"""The GAP network (spec §4.2): RoBERTa text encoder + vil3dref-style CMT spatial decoder + MLP head.

Parameter names follow the official ``Fast3dNet`` exactly, so an official ``checkpoint_best.pth``
``model_state_dict`` loads with ``strict=True``::

    text_encoder.*                          transformers.RobertaModel (with pooler, unused as official)
    mm_encoder.layers.{i}.self_attn.*       spatial self-attention: w_qs w_ks w_vs fc layer_norm lang_cond_fc
    mm_encoder.layers.{i}.multihead_attn.*  nn.MultiheadAttention cross-attention to the text
    mm_encoder.layers.{i}.linear1/linear2/norm1/norm2/norm3
    mm_encoder.loc_layers.{0}.{0,1}.*       Linear(dim_loc → hidden) + LayerNorm
    text_projector.* obj_feat_projector.* obj_id_embedding.weight out_head_attn.{0,2,4}.*

Submodules are registered in the official order, so ``state_dict()`` lists the keys in the same order too.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fast3d_cli.gap.configuration import GAPConfig

# ---------------------------------------------------------------------------------------------------------
# Pairwise spatial features


def pairwise_locations(
    centers: torch.Tensor, spatial_dim: int = 5, dist_norm: bool = True, eps: float = 1e-10
) -> torch.Tensor:
    """Pairwise relative-position features [B, N, N, spatial_dim] from object centers [B, N, 3].

    For objects l (row) and t (column), Δ = c_l − c_t, d = sqrt(|Δ|² + eps), d2 = sqrt(Δx² + Δy² + eps):
    ``[d / max_scene(d), Δz / d, d2 / d, Δy / d2, Δx / d2]`` (the max runs over all pairs of the sample;
    ``dist_norm=False`` keeps d). ``spatial_dim`` 4 drops the distance, 1 keeps only the distance. The eps
    keeps coincident objects (e.g. zero-padded ones) finite: their features are [d/max, 0, 1, 0, 0].
    """
    delta = centers[:, :, None, :] - centers[:, None, :, :]
    dist = torch.sqrt((delta**2).sum(-1) + eps)
    norm_dist = dist / dist.flatten(1).amax(dim=1)[:, None, None] if dist_norm else dist
    if spatial_dim == 1:
        return norm_dist.unsqueeze(-1)
    dist_2d = torch.sqrt((delta[..., :2] ** 2).sum(-1) + eps)
    feats = torch.stack(
        [norm_dist, delta[..., 2] / dist, dist_2d / dist, delta[..., 1] / dist_2d, delta[..., 0] / dist_2d],
        dim=-1,
    )
    return feats[..., 1:] if spatial_dim == 4 else feats


# ---------------------------------------------------------------------------------------------------------
# CMT


def _activation(name: str):
    return {"gelu": F.gelu, "relu": F.relu}[name]


class SpatialSelfAttention(nn.Module):
    """Language-conditioned spatial self-attention over objects (official ``MultiHeadAttentionSpatial``,
    ``spatial_attn_fusion="cond"``).

    Per head h and object pair (l, t): a gate g = sigmoid(b_h,l + w_h,l · f_lt), with [b, w] =
    ``lang_cond_fc(x_l + text_cls)`` (per head: 1 bias + spatial_dim weights). Attention =
    softmax_t(q_l·k_t / sqrt(d_head) + log(max(g, 1e-6))). Output = LayerNorm(dropout(fc(ctx)) + x) with x the
    module input (already layer-normed by the decoder layer).
    """

    def __init__(self, d_model: int, n_head: int, dropout: float, spatial_dim: int, spatial_multihead: bool):
        super().__init__()
        self.n_head = n_head
        self.d_head = d_model // n_head
        self.spatial_dim = spatial_dim
        self.spatial_n_head = n_head if spatial_multihead else 1
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)
        self.lang_cond_fc = nn.Linear(d_model, self.spatial_n_head * (spatial_dim + 1))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, d_head]
        b, n, _ = x.shape
        return x.view(b, n, self.n_head, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, pairwise_locs: torch.Tensor, txt_cls: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self._heads(self.w_qs(x)), self._heads(self.w_ks(x)), self._heads(self.w_vs(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d_head)  # [B, H, L, T]

        weights = self.lang_cond_fc(x + txt_cls[:, None, :])  # [B, L, Hs * (S + 1)]
        weights = weights.view(b, n, self.spatial_n_head, self.spatial_dim + 1).transpose(1, 2)
        if self.spatial_n_head == 1:
            weights = weights.expand(b, self.n_head, n, self.spatial_dim + 1)
        gate = torch.einsum("bhls,blts->bhlt", weights[..., 1:], pairwise_locs) + weights[..., :1]
        gate = torch.sigmoid(gate)

        attn = torch.softmax(scores + torch.log(torch.clamp(gate, min=1e-6)), dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.layer_norm(self.dropout(self.fc(ctx)) + x)


class DHCT(nn.Module):
    """Efficient3D's learnable cross-attention mask (``DVTIE/cmt_module.py``, github.com/sol924/Efficient3D):
    M = sigmoid((q W_q)(k W_k)ᵀ / (sqrt(d_dhct) · temp)) in (0, 1), [B, Lq, Lk], zero on padded keys.

    The official code zeroes the padded keys inside a ``torch.no_grad`` method, so the M it returns (text
    padding is always given) carries no gradient: W_q and W_k keep their initial values and only the
    per-head gates of the decoder layer learn. Reproduced as is (``detach``).
    """

    def __init__(self, d_model: int, d_dhct: int, temp: float):
        super().__init__()
        self.proj_q = nn.Linear(d_model, d_dhct)
        self.proj_k = nn.Linear(d_model, d_dhct)
        self.scale = d_dhct**0.5
        self.temp = float(temp)

    def forward(self, q: torch.Tensor, k: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bqd,bkd->bqk", self.proj_q(q), self.proj_k(k)) / (self.scale * self.temp)
        return torch.sigmoid(scores).detach().masked_fill(key_padding[:, None, :], 0.0)


class SpatialDecoderLayer(nn.Module):
    """Pre-LN decoder layer: spatial self-attention, cross-attention to the text, FFN; each residual."""

    def __init__(self, config: GAPConfig):
        super().__init__()
        d, h = config.hidden_size, config.num_attention_heads
        # Registration order = the official one (its self_attn is deleted and re-added last).
        self.multihead_attn = nn.MultiheadAttention(d, h, dropout=config.dropout, batch_first=True)
        self.linear1 = nn.Linear(d, config.dim_feedforward)
        self.dropout = nn.Dropout(config.dropout)
        self.linear2 = nn.Linear(config.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(config.dropout)
        self.dropout2 = nn.Dropout(config.dropout)
        self.dropout3 = nn.Dropout(config.dropout)
        self.activation = _activation(config.activation)
        self.self_attn = SpatialSelfAttention(
            d, h, config.dropout, config.spatial_dim, config.spatial_multihead
        )
        self.dhct_enabled = False  # set per layer by CMTEncoder (the last dhct_last_n_layers)
        if config.use_dhct:
            self.cross_dhct = DHCT(d, config.dhct_dim, config.dhct_temp)
            self.dhct_head_gate = nn.Parameter(torch.zeros(h))
            self.dhct_strength = config.dhct_strength
            self.dhct_gate_bias = config.dhct_gate_bias

    def cross_attention(self, x: torch.Tensor, txt: torch.Tensor, txt_padding: torch.Tensor) -> torch.Tensor:
        """Cross-attention to the text; with DHCT, the additive mask of the official ``_build_dhct_bias``:
        -inf on padded keys + strength · (M - 0.5) · sigmoid(gate_h + gate_bias), per head."""
        attn = self.multihead_attn
        if not self.dhct_enabled:
            return attn(x, txt, txt, key_padding_mask=txt_padding, need_weights=False)[0]
        batch, n_q, n_k, heads = x.shape[0], x.shape[1], txt.shape[1], attn.num_heads
        bias = self.dhct_strength * (self.cross_dhct(x, txt, txt_padding) - 0.5)
        gate = torch.sigmoid(self.dhct_head_gate + self.dhct_gate_bias).view(1, heads, 1, 1)
        padding = torch.zeros(batch, 1, 1, n_k, dtype=x.dtype, device=x.device).masked_fill(
            txt_padding[:, None, None, :], float("-inf")
        )
        mask = (padding + bias[:, None] * gate).reshape(batch * heads, n_q, n_k).to(x.dtype)
        return attn(x, txt, txt, attn_mask=mask, need_weights=False)[0]

    def forward(
        self,
        obj: torch.Tensor,
        txt: torch.Tensor,
        txt_padding: torch.Tensor,
        pairwise_locs: torch.Tensor,
    ) -> torch.Tensor:
        x = self.norm1(obj)
        obj = obj + self.dropout1(self.self_attn(x, pairwise_locs, txt[:, 0]))
        x = self.cross_attention(self.norm2(obj), txt, txt_padding)
        obj = obj + self.dropout2(x)
        x = self.linear2(self.dropout(self.activation(self.linear1(self.norm3(obj)))))
        return obj + self.dropout3(x)


class CMTEncoder(nn.Module):
    """The official ``CMT`` (spatial decoder variant): location encoding + stacked spatial decoder layers."""

    def __init__(self, config: GAPConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(SpatialDecoderLayer(config) for _ in range(config.num_layers))
        first_dhct = config.num_layers - max(1, config.dhct_last_n_layers)
        for i, layer in enumerate(self.layers):
            layer.dhct_enabled = config.use_dhct and i >= first_dhct
        n_loc = config.num_layers if config.obj_loc_encoding == "diff_all" else 1
        self.loc_layers = nn.ModuleList(
            nn.Sequential(nn.Linear(config.dim_loc, config.hidden_size), nn.LayerNorm(config.hidden_size))
            for _ in range(n_loc)
        )
        self.apply(_init_cmt_weights)

    def forward(
        self, txt: torch.Tensor, txt_mask: torch.Tensor, obj: torch.Tensor, locs: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.config
        pairwise = pairwise_locations(locs[..., :3], cfg.spatial_dim, cfg.spatial_dist_norm)
        txt_padding = ~txt_mask.bool()
        for i, layer in enumerate(self.layers):
            if cfg.obj_loc_encoding == "diff_all":
                obj = obj + self.loc_layers[i](locs)
            elif cfg.obj_loc_encoding == "same_all" or i == 0:
                obj = obj + self.loc_layers[0](locs)
            obj = layer(obj, txt, txt_padding, pairwise)
        return obj


def _init_cmt_weights(module: nn.Module) -> None:
    """Official CMT init: Linear N(0, 0.02) with zero bias, LayerNorm (1, 0); ``in_proj`` keeps PyTorch's."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------------
# GAP


class GAPModel(nn.Module):
    """Predicts a sample's per-object attention logits [B, max_obj_num] (spec §4.2).

    ``text_encoder``: a ready ``RobertaModel`` (e.g. from :meth:`from_text_encoder_dir`); by default one is
    built from ``config.text_config`` with random weights.
    """

    def __init__(self, config: GAPConfig, text_encoder: nn.Module | None = None):
        super().__init__()
        from transformers import RobertaModel

        self.config = config
        if text_encoder is None:
            text_encoder = RobertaModel(config.roberta_config())
        self.text_encoder = text_encoder
        self.mm_encoder = CMTEncoder(config)
        self.text_projector = nn.Linear(config.text_hidden_size, config.hidden_size)
        self.obj_feat_projector = nn.Linear(config.input_feat_dim, config.hidden_size)
        self.obj_id_embedding = nn.Embedding(config.max_obj_num, config.hidden_size)
        half = config.hidden_size // 2
        self.out_head_attn = nn.Sequential(
            nn.Linear(config.hidden_size, half),
            nn.ReLU(),
            nn.LayerNorm(half, eps=1e-12),
            nn.Dropout(config.head_dropout),
            nn.Linear(half, 1),
        )
        if not config.train_text_encoder:
            self.text_encoder.requires_grad_(False)

    @classmethod
    def from_text_encoder_dir(cls, config: GAPConfig, directory: Path) -> GAPModel:
        """A GAP network whose text encoder starts from the pretrained RoBERTa in a local folder."""
        from transformers import RobertaModel

        from fast3d_cli.errors import UserError

        try:
            encoder = RobertaModel.from_pretrained(str(directory))
        except (OSError, ValueError) as err:
            message = str(err).splitlines()[0]
            raise UserError(f"cannot load a RoBERTa model from {directory}: {message}") from None
        if encoder.config.hidden_size != config.text_hidden_size:
            raise UserError(
                f"text encoder in {directory} has hidden size {encoder.config.hidden_size}, the GAP config "
                f"expects {config.text_hidden_size}"
            )
        return cls(config, text_encoder=encoder)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected text states [B, T, hidden].

        Position ids are counted over the attention mask (pad id + 1, + 2, …; pads get the pad id). For
        right-padded prompts that never contain the pad token this is exactly RoBERTa's own rule; it also
        stays right when the pad token doubles as a real token (the sample tokenizer pads with <unk>).
        """
        mask = attention_mask.long()
        position_ids = torch.cumsum(mask, dim=1) * mask + self.config.pad_token_id
        hidden = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.text_projector(hidden)

    def forward(
        self,
        feats_3d: torch.Tensor,
        feats_2d: torch.Tensor,
        locs: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits [B, N] from object features [B, N, D3], [B, N, D2], boxes [B, N, dim_loc] and a prompt.

        N must be ``max_obj_num`` (every slot has its identifier embedding; all objects are attended, as
        official: zero-padded objects are ordinary objects with zero features and a zero box).
        """
        cfg = self.config
        n = feats_3d.shape[1]
        if n != cfg.max_obj_num or feats_2d.shape[1] != n or locs.shape[1] != n:
            raise ValueError(
                f"GAP expects {cfg.max_obj_num} objects per sample, got feats_3d {tuple(feats_3d.shape)}, "
                f"feats_2d {tuple(feats_2d.shape)}, locs {tuple(locs.shape)}"
            )
        if feats_3d.shape[-1] + feats_2d.shape[-1] != cfg.input_feat_dim or locs.shape[-1] != cfg.dim_loc:
            raise ValueError(
                f"GAP expects features {cfg.feat_dim_3d}+{cfg.feat_dim_2d} and {cfg.dim_loc}-d boxes, got "
                f"{feats_3d.shape[-1]}+{feats_2d.shape[-1]} and {locs.shape[-1]}"
            )
        dtype = self.obj_feat_projector.weight.dtype  # float32, also under autocast (as official)
        txt = self.encode_text(input_ids, attention_mask)
        feats = torch.cat([feats_3d, feats_2d], dim=-1).to(dtype)
        obj = self.obj_feat_projector(feats) + self.obj_id_embedding.weight
        obj = self.mm_encoder(txt, attention_mask, obj, locs.to(dtype))
        return self.out_head_attn(obj).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------
# Loss and validation metrics (spec §4.3, §4.5)


def kl_distribution_loss(logits: torch.Tensor, target_maps: torch.Tensor) -> torch.Tensor:
    """Official distribution-matching loss: KL(Q ‖ P) averaged over the batch.

    Q = a / (Σa + 1e-8), P = softmax(logits); ``kl_div(log(P + 1e-8), Q, reduction="batchmean")``. Computed in
    float32 (what CUDA autocast does for softmax/log/kl_div anyway).
    """
    return F.kl_div(_log_p(logits), _normalise(target_maps), reduction="batchmean")


def kl_per_sample(logits: torch.Tensor, target_maps: torch.Tensor) -> torch.Tensor:
    """The same KL per sample [B]; its mean is :func:`kl_distribution_loss`."""
    return F.kl_div(_log_p(logits), _normalise(target_maps), reduction="none").sum(-1)


def _log_p(logits: torch.Tensor) -> torch.Tensor:
    return torch.log(F.softmax(logits.float(), dim=-1) + 1e-8)


def _normalise(target_maps: torch.Tensor) -> torch.Tensor:
    target = target_maps.float()
    return target / (target.sum(dim=-1, keepdim=True) + 1e-8)


def topk_f1(logits: torch.Tensor, target_maps: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample F1 [B] of the predicted top-k objects against the target's top-k (official metric).

    Both sides mark exactly k positives, so precision = recall = F1 = |overlap| / k.
    """
    k = min(k, logits.shape[-1])
    pred = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    true = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, target_maps.topk(k, dim=-1).indices, True)
    return (pred & true).sum(-1).float() / k


def captured_mass(logits: torch.Tensor, target_maps: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample share [B] of the (normalised) target attention mass on the predicted top-k objects."""
    k = min(k, logits.shape[-1])
    return _normalise(target_maps).gather(-1, logits.topk(k, dim=-1).indices).sum(-1)


def validation_metrics(
    logits: torch.Tensor, target_maps: torch.Tensor, ks: tuple[int, ...] = (5, 10, 20)
) -> dict[str, torch.Tensor]:
    """Per-sample validation metrics [B] each: ``kd_loss``, ``topk_{k}_f1_score``, ``topk_{k}_mass``."""
    logits, target_maps = logits.detach().float(), target_maps.detach().float()
    out = {"kd_loss": kl_per_sample(logits, target_maps)}
    for k in ks:
        out[f"topk_{k}_f1_score"] = topk_f1(logits, target_maps, k)
        out[f"topk_{k}_mass"] = captured_mass(logits, target_maps, k)
    return out
