"""GAP network (spec §4.2-§4.5): official parameter layout, the forward math, loss and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from fast3d_cli.gap import (
    GAPConfig,
    GAPModel,
    captured_mass,
    kl_distribution_loss,
    kl_per_sample,
    pairwise_locations,
    topk_f1,
    validation_metrics,
)

TEXT = {
    "vocab_size": 40,
    "hidden_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 40,
    "max_position_embeddings": 34,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def tiny_config(**overrides) -> GAPConfig:
    kwargs = dict(
        feat_dim_3d=8,
        feat_dim_2d=8,
        hidden_size=32,
        num_attention_heads=2,
        num_layers=2,
        dim_feedforward=48,
        text_config=dict(TEXT),
    )
    kwargs.update(overrides)
    return GAPConfig(**kwargs)


def roberta_layout(text: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The RoBERTa keys of an official checkpoint (transformers 4.x ``RobertaModel`` with pooler)."""
    h, i, v = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    keys = [
        ("embeddings.word_embeddings.weight", (v, h)),
        ("embeddings.position_embeddings.weight", (text["max_position_embeddings"], h)),
        ("embeddings.token_type_embeddings.weight", (text["type_vocab_size"], h)),
        ("embeddings.LayerNorm.weight", (h,)),
        ("embeddings.LayerNorm.bias", (h,)),
    ]
    for n in range(text["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for name, shape in (
            ("attention.self.query", (h, h)),
            ("attention.self.key", (h, h)),
            ("attention.self.value", (h, h)),
            ("attention.output.dense", (h, h)),
            ("attention.output.LayerNorm", (h,)),
            ("intermediate.dense", (i, h)),
            ("output.dense", (h, i)),
            ("output.LayerNorm", (h,)),
        ):
            keys += [(p + name + ".weight", shape), (p + name + ".bias", (shape[0],))]
    keys += [("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]
    return [(f"text_encoder.{k}", s) for k, s in keys]


def official_layout(c: GAPConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Key order and shapes of the official ``Fast3dNet.state_dict()`` (modeling_fast3d.py, cmt_module.py)."""
    d, f, s, h = c.hidden_size, c.dim_feedforward, c.spatial_dim, c.num_attention_heads
    keys = roberta_layout(c.text_config)

    def linear(name, out_dim, in_dim):
        return [(name + ".weight", (out_dim, in_dim)), (name + ".bias", (out_dim,))]

    def norm(name, dim):
        return [(name + ".weight", (dim,)), (name + ".bias", (dim,))]

    for i in range(c.num_layers):
        p = f"mm_encoder.layers.{i}."
        keys += [
            (p + "multihead_attn.in_proj_weight", (3 * d, d)),
            (p + "multihead_attn.in_proj_bias", (3 * d,)),
        ]
        keys += linear(p + "multihead_attn.out_proj", d, d)
        keys += linear(p + "linear1", f, d) + linear(p + "linear2", d, f)
        keys += norm(p + "norm1", d) + norm(p + "norm2", d) + norm(p + "norm3", d)
        for name in ("w_qs", "w_ks", "w_vs", "fc"):
            keys += linear(p + "self_attn." + name, d, d)
        keys += norm(p + "self_attn.layer_norm", d) + linear(p + "self_attn.lang_cond_fc", h * (s + 1), d)
    keys += linear("mm_encoder.loc_layers.0.0", d, 6) + norm("mm_encoder.loc_layers.0.1", d)
    keys += linear("text_projector", d, c.text_config["hidden_size"])
    keys += linear("obj_feat_projector", d, c.feat_dim_3d + c.feat_dim_2d)
    keys += [("obj_id_embedding.weight", (100, d))]
    keys += (
        linear("out_head_attn.0", d // 2, d)
        + norm("out_head_attn.2", d // 2)
        + linear("out_head_attn.4", 1, d // 2)
    )
    return keys


def official_state_dict(c: GAPConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict built from the official layout alone (not from our module)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_layout(c):
        value = torch.randn(shape, generator=g) * 0.2
        if len(shape) == 1 and key.endswith(".weight"):  # LayerNorm gains around 1
            value = value + 1.0
        state[key] = value
    return state


def test_roberta_keys_unchanged_in_installed_transformers():
    from transformers import RobertaConfig, RobertaModel

    ours = [(k, tuple(v.shape)) for k, v in RobertaModel(RobertaConfig(**TEXT)).state_dict().items()]
    assert sorted(f"text_encoder.{k}" for k, _ in ours) == sorted(k for k, _ in roberta_layout(TEXT))
    assert dict((f"text_encoder.{k}", s) for k, s in ours) == dict(roberta_layout(TEXT))


def test_state_dict_layout_is_official_and_loads_strictly():
    c = tiny_config()
    model = GAPModel(c)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    expected = official_layout(c)
    cmt = [kv for kv in expected if not kv[0].startswith("text_encoder.")]
    assert [kv for kv in ours if not kv[0].startswith("text_encoder.")] == cmt  # same keys, same order
    assert dict(ours) == dict(expected)
    result = model.load_state_dict(official_state_dict(c), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_official_default_config():
    c = GAPConfig()
    assert (c.input_feat_dim, c.hidden_size, c.num_attention_heads, c.num_layers) == (2048, 768, 12, 4)
    assert (c.dim_feedforward, c.dropout, c.head_dropout, c.activation) == (2048, 0.1, 0.3, "gelu")
    assert (c.spatial_dim, c.spatial_dist_norm, c.spatial_attn_fusion, c.spatial_multihead) == (
        5,
        True,
        "cond",
        True,
    )
    assert (c.obj_loc_encoding, c.dim_loc, c.max_obj_num, c.train_text_encoder) == ("same_all", 6, 100, True)
    assert c.text_hidden_size == 768 and c.text_capacity == 512
    with pytest.raises(ValueError, match="spatial_attn_fusion"):
        GAPConfig(spatial_attn_fusion="mul")


# ---------------------------------------------------------------------------------------------------------
# An independent reference of the §4.2 forward, written from the spec's prose, in float64.


def _ref_forward(sd, c: GAPConfig, txt_hidden, txt_mask, f3, f2, locs):
    sd = {k: v.double() for k, v in sd.items()}

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    def ln(x, name, eps=1e-5):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]

    def softmax(x):
        e = torch.exp(x - x.max(-1, keepdim=True).values)
        return e / e.sum(-1, keepdim=True)

    b, n, _ = f3.shape
    d, h = c.hidden_size, c.num_attention_heads
    dh, s = d // h, c.spatial_dim
    txt = lin(txt_hidden, "text_projector")
    obj = lin(torch.cat([f3, f2], -1), "obj_feat_projector") + sd["obj_id_embedding.weight"]

    # pairwise features: l = row, t = column, Δ = c_l − c_t
    cen = locs[..., :3]
    feats = torch.zeros(b, n, n, 5, dtype=torch.float64)
    for bi in range(b):
        delta = cen[bi][:, None, :] - cen[bi][None, :, :]
        dist = torch.sqrt(delta[..., 0] ** 2 + delta[..., 1] ** 2 + delta[..., 2] ** 2 + 1e-10)
        dist2 = torch.sqrt(delta[..., 0] ** 2 + delta[..., 1] ** 2 + 1e-10)
        feats[bi, ..., 0] = dist / dist.max()
        feats[bi, ..., 1] = delta[..., 2] / dist
        feats[bi, ..., 2] = dist2 / dist
        feats[bi, ..., 3] = delta[..., 1] / dist2
        feats[bi, ..., 4] = delta[..., 0] / dist2

    loc_enc = ln(lin(locs, "mm_encoder.loc_layers.0.0"), "mm_encoder.loc_layers.0.1")
    for i in range(c.num_layers):
        p = f"mm_encoder.layers.{i}."
        obj = obj + loc_enc
        # spatial self-attention (inner residual + LayerNorm on the normed input)
        x = ln(obj, p + "norm1")
        q, k, v = lin(x, p + "self_attn.w_qs"), lin(x, p + "self_attn.w_ks"), lin(x, p + "self_attn.w_vs")
        cond = lin(x + txt[:, :1, :], p + "self_attn.lang_cond_fc")  # [B, N, H*(S+1)]
        heads = []
        for hi in range(h):
            sl = slice(hi * dh, (hi + 1) * dh)
            score = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh)
            bias = cond[..., hi * (s + 1)]
            w = cond[..., hi * (s + 1) + 1 : (hi + 1) * (s + 1)]
            gate = torch.sigmoid(bias[:, :, None] + (w[:, :, None, :] * feats).sum(-1))
            heads.append(softmax(score + torch.log(torch.clamp(gate, min=1e-6))) @ v[..., sl])
        sa = ln(lin(torch.cat(heads, -1), p + "self_attn.fc") + x, p + "self_attn.layer_norm")
        obj = obj + sa
        # cross-attention to the text, padded text tokens excluded
        x = ln(obj, p + "norm2")
        wq, wk, wv = sd[p + "multihead_attn.in_proj_weight"].chunk(3)
        bq, bk, bv = sd[p + "multihead_attn.in_proj_bias"].chunk(3)
        q, k, v = x @ wq.T + bq, txt @ wk.T + bk, txt @ wv.T + bv
        heads = []
        for hi in range(h):
            sl = slice(hi * dh, (hi + 1) * dh)
            score = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh)
            score = score.masked_fill(txt_mask[:, None, :] == 0, float("-inf"))
            heads.append(softmax(score) @ v[..., sl])
        obj = obj + lin(torch.cat(heads, -1), p + "multihead_attn.out_proj")
        # FFN
        x = ln(obj, p + "norm3")
        obj = obj + lin(torch.nn.functional.gelu(lin(x, p + "linear1")), p + "linear2")
    hid = torch.relu(lin(obj, "out_head_attn.0"))
    return lin(ln(hid, "out_head_attn.2", eps=1e-12), "out_head_attn.4").squeeze(-1)


def _inputs(seed: int = 1, n_real: int = 7):
    g = torch.Generator().manual_seed(seed)
    f3, f2 = torch.zeros(2, 100, 8), torch.zeros(2, 100, 8)
    locs = torch.zeros(2, 100, 6)
    f3[:, :n_real] = torch.randn(2, n_real, 8, generator=g)
    f2[:, :n_real] = torch.randn(2, n_real, 8, generator=g)
    locs[:, :n_real, :3] = torch.randn(2, n_real, 3, generator=g) * 2
    locs[:, :n_real, 3:] = torch.rand(2, n_real, 3, generator=g)
    locs[1, 3, :3] = locs[1, 4, :3]  # two coincident proposals
    # RoBERTa-style ids: <s> … </s>, right-padded with the pad id 1
    input_ids = torch.tensor([[0, 5, 9, 13, 22, 7, 2], [0, 30, 11, 2, 1, 1, 1]])
    mask = (input_ids != 1).long()
    return f3, f2, locs, input_ids, mask


def test_forward_matches_reference_math():
    torch.manual_seed(0)
    c = tiny_config()
    sd = official_state_dict(c)
    model = GAPModel(c)
    model.load_state_dict(sd, strict=True)
    model.eval()
    f3, f2, locs, ids, mask = _inputs()
    with torch.no_grad():
        logits = model(f3, f2, locs, ids, mask)
        # text states from RoBERTa's own position rule (ids never contain the pad id inside a prompt)
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    ref = _ref_forward(sd, c, hidden.double(), mask, f3.double(), f2.double(), locs.double())
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.double(), ref, atol=1e-5, rtol=0)
    assert logits.std() > 0.05  # the comparison is not between two constants


def test_eval_deterministic_and_independent_of_batch_padding():
    c = tiny_config()
    model = GAPModel(c).eval()
    f3, f2, locs, ids, mask = _inputs(seed=3)
    with torch.no_grad():
        a = model(f3, f2, locs, ids, mask)
        b = model(f3, f2, locs, ids, mask)
        alone = model(f3[1:], f2[1:], locs[1:], ids[1:, :4], mask[1:, :4])
    assert torch.equal(a, b)
    torch.testing.assert_close(alone[0], a[1], atol=1e-5, rtol=0)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(f3, f2, locs, ids, mask), a)  # dropout is active in training mode


def test_frozen_text_encoder_and_object_count_check():
    model = GAPModel(tiny_config(train_text_encoder=False))
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.mm_encoder.parameters())
    f3, f2, locs, ids, mask = _inputs()
    with pytest.raises(ValueError, match="100 objects"):
        model(f3[:, :50], f2[:, :50], locs[:, :50], ids, mask)


def test_pairwise_features_hand_checked():
    centers = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]], dtype=torch.float64)
    f = pairwise_locations(centers)
    assert f.shape == (1, 3, 3, 5)
    dmax = math.sqrt(29.0)  # |B − C| = sqrt(9 + 16 + 4), the largest distance of the scene
    eps = 1e-10
    # l = A, t = B: Δ = A − B = (−3, −4, 0)
    torch.testing.assert_close(
        f[0, 0, 1], torch.tensor([5 / dmax, 0.0, 1.0, -0.8, -0.6], dtype=torch.float64)
    )
    # l = B, t = A: Δ = (3, 4, 0)
    torch.testing.assert_close(f[0, 1, 0], torch.tensor([5 / dmax, 0.0, 1.0, 0.8, 0.6], dtype=torch.float64))
    # l = C, t = A: Δ = (0, 0, 2): the horizontal distance is sqrt(eps)
    torch.testing.assert_close(
        f[0, 2, 0], torch.tensor([2 / dmax, 1.0, math.sqrt(eps) / 2, 0.0, 0.0], dtype=torch.float64)
    )
    # l = B, t = C: Δ = (3, 4, −2)
    r = math.sqrt(29.0)
    torch.testing.assert_close(f[0, 1, 2], torch.tensor([1.0, -2 / r, 5 / r, 0.8, 0.6], dtype=torch.float64))
    # the diagonal (and any coincident pair) stays finite thanks to eps: d = d2 = sqrt(eps)
    torch.testing.assert_close(
        f[0, 0, 0], torch.tensor([math.sqrt(eps) / dmax, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    )
    unnorm = pairwise_locations(centers, dist_norm=False)
    assert unnorm[0, 0, 1, 0].item() == pytest.approx(5.0)
    assert torch.equal(pairwise_locations(centers, spatial_dim=4), f[..., 1:])
    assert torch.equal(pairwise_locations(centers, spatial_dim=1), f[..., :1])
    zeros = pairwise_locations(torch.zeros(1, 4, 3))  # an all-padded scene
    assert torch.isfinite(zeros).all()


def test_kl_loss_hand_checked():
    logits = torch.tensor([[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0]])
    maps = torch.tensor([[2.0, 1.0, 1.0], [0.3, 0.3, 0.3]])
    # sample 0: P = (1/4, 1/2, 1/4), Q = (1/2, 1/4, 1/4): KL = ½ ln 2 − ¼ ln 2 = ¼ ln 2
    # sample 1: Q = P, KL = 0
    expected = 0.25 * math.log(2.0) / 2
    assert kl_distribution_loss(logits, maps).item() == pytest.approx(expected, abs=1e-6)
    per = kl_per_sample(logits, maps)
    assert per[0].item() == pytest.approx(0.25 * math.log(2.0), abs=1e-6)
    assert per[1].item() == pytest.approx(0.0, abs=1e-6)
    # scale invariance of the target (it is normalised) and batchmean = mean of the per-sample values
    assert kl_distribution_loss(logits, maps * 7).item() == pytest.approx(expected, abs=1e-6)
    assert kl_distribution_loss(logits, maps).item() == pytest.approx(per.mean().item(), abs=1e-7)


def test_topk_f1_and_captured_mass_hand_checked():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    maps = torch.tensor([[0.0, 10.0, 9.0, 0.0, 0.0, 8.0]])
    # top-2: predicted {0, 1}, target {1, 2}: overlap 1 -> F1 1/2; mass (0 + 10) / 27
    assert topk_f1(logits, maps, 2).item() == pytest.approx(0.5)
    assert captured_mass(logits, maps, 2).item() == pytest.approx(10 / 27, abs=1e-6)
    # top-3: predicted {0, 1, 2}, target {1, 2, 5}: overlap 2 -> 2/3; mass 19 / 27
    assert topk_f1(logits, maps, 3).item() == pytest.approx(2 / 3)
    assert captured_mass(logits, maps, 3).item() == pytest.approx(19 / 27, abs=1e-6)
    # k larger than the object count: everything is selected
    assert topk_f1(logits, maps, 10).item() == pytest.approx(1.0)
    assert captured_mass(logits, maps, 10).item() == pytest.approx(1.0, abs=1e-6)
    metrics = validation_metrics(torch.cat([logits, maps]), torch.cat([maps, maps]), ks=(2, 3))
    assert set(metrics) == {"kd_loss", "topk_2_f1_score", "topk_2_mass", "topk_3_f1_score", "topk_3_mass"}
    assert metrics["topk_2_f1_score"].tolist() == pytest.approx([0.5, 1.0])
    assert metrics["topk_3_mass"].tolist() == pytest.approx([19 / 27, 27 / 27], abs=1e-6)


def test_official_config_variants_build_and_run():
    f3, f2, locs, ids, mask = _inputs()
    model = GAPModel(tiny_config(obj_loc_encoding="diff_all", spatial_multihead=False, spatial_dim=4)).eval()
    state = model.state_dict()
    assert "mm_encoder.loc_layers.1.0.weight" in state  # one location encoder per layer
    assert state["mm_encoder.layers.0.self_attn.lang_cond_fc.weight"].shape == (4 + 1, 32)  # one shared head
    same_0 = GAPModel(tiny_config(obj_loc_encoding="same_0")).eval()
    assert "mm_encoder.loc_layers.1.0.weight" not in same_0.state_dict()
    with torch.no_grad():
        for m in (model, same_0):
            assert torch.isfinite(m(f3, f2, locs, ids, mask)).all()


def test_text_positions_follow_the_mask_not_the_pad_id():
    # The sample tokenizer pads with <unk>, which also occurs inside prompts: a real token equal to the pad id
    # must still get its own position (RoBERTa's default rule would give it the padding position).
    model = GAPModel(tiny_config()).eval()
    pad = TEXT["pad_token_id"]
    ids = torch.tensor([[0, 5, pad, 7, 2, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    positions = torch.tensor([[2, 3, 4, 5, 6, 1, 1]])  # pad id + 1, + 2, …; padding keeps the pad id
    with torch.no_grad():
        ours = model.encode_text(ids, mask)
        expected = model.text_encoder(input_ids=ids, attention_mask=mask, position_ids=positions)
        default = model.text_encoder(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(ours, model.text_projector(expected.last_hidden_state))
    assert not torch.allclose(ours[0, :5], model.text_projector(default.last_hidden_state)[0, :5])
