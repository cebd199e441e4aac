"""models/: G-HANet and ABMIL structure and maths, gradient paths, registry, learning (checkpoints: test_checkpoint.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ghanet_pipeline.core.errors import ConfigError, InputError
from ghanet_pipeline.models import MODELS, create_model, genomic_weights, patch_ops, topk_count
from ghanet_pipeline.models.layers import MultiHeadCrossAttention, MultiHeadSelfAttention, ReLUDropout
from ghanet_pipeline.models.reference import reference_forward
from ghanet_pipeline.models.survival import nll_loss, sce_loss

TINY = dict(in_dim=16, family_sizes=[3, 0, 4], n_bins=4, dim=32, heads=2, dropout=0.25, topk=0.2)


def tiny(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model("ghanet", **{**TINY, **kw})


# ---------------------------------------------------------------- structure (default configuration)

def test_default_config_shapes_and_parameter_structure():
    sizes = [80, 0, 120, 40, 60, 90]
    torch.manual_seed(0)
    model = create_model("ghanet", in_dim=1024, family_sizes=sizes)
    assert model.needs_genomics and model.name == "ghanet"
    cab, hsb = model.cab, model.hsb
    assert (cab.embed.in_features, cab.embed.out_features) == (1024, 512)
    assert (hsb.embed.in_features, hsb.embed.out_features) == (1024, 512)
    assert cab.tokens.shape == (6, 512)
    for att in (cab.mhca, hsb.mhsa):
        assert att.heads == 4 and att.dim_head == 128
        assert att.to_q.bias is None and att.to_k.bias is None and att.to_v.bias is None
        assert att.to_out.bias is not None
    for ffn in (cab.ffn1, cab.ffn2, hsb.ffn):            # GEGLU 512 -> 4096 (2 x 2048) -> 512
        assert ffn.proj_in.weight.shape == (4096, 512) and ffn.proj_out.weight.shape == (512, 2048)
    assert sorted(cab.recon_heads) == ["0", "2", "3", "4", "5"]          # no head for the empty family
    for i, n in enumerate(sizes):
        if n:
            head = cab.recon_heads[str(i)].net
            assert head[0].weight.shape == (512, 512) and isinstance(head[1], torch.nn.LayerNorm)
            assert isinstance(head[2], torch.nn.ELU) and head[4].weight.shape == (n, 512)
    assert hsb.gate.attention_a.weight.shape == (256, 512) and hsb.gate.attention_c.weight.shape == (1, 256)
    assert hsb.compress[0].weight.shape == (256, 512)
    assert hsb.classifier.weight.shape == (4, 6 * 256)
    # parameter count from the architecture, term by term
    lin = lambda i, o, b=True: i * o + (o if b else 0)          # noqa: E731
    ln = 2 * 512
    mha = 3 * lin(512, 512, False) + lin(512, 512)
    ffn = lin(512, 4096) + lin(2048, 512)
    heads = sum(lin(512, 512) + ln + lin(512, n) for n in sizes if n)
    cab_n = lin(1024, 512) + 6 * 512 + mha + 2 * ffn + 6 * ln + heads
    hsb_n = (lin(1024, 512) + ln + 2 * lin(512, 256) + lin(256, 1) + 2 * (lin(512, 512) + ln) + mha + ln + ffn
             + lin(512, 256) + 2 * 256 + lin(6 * 256, 4))
    assert sum(p.numel() for p in cab.parameters()) == cab_n
    assert sum(p.numel() for p in hsb.parameters()) == hsb_n
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(37, 1024))
    assert out["logits"].shape == out["hazards"].shape == out["S"].shape == (1, 4)
    assert out["risk"].shape == (1,)
    assert out["assoc"].shape == (6, 37) and out["w_mor"].shape == (37,)
    assert [None if r is None else tuple(r.shape) for r in out["recon"]] == [
        (80,), None, (120,), (40,), (60,), (90,)]


def test_the_two_cross_attention_steps_share_one_module():
    model = tiny()
    cross = [m for m in model.cab.modules()
             if isinstance(m, MultiHeadCrossAttention) and not isinstance(m, MultiHeadSelfAttention)]
    assert len(cross) == 1
    calls = []
    model.cab.mhca.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    model(torch.randn(9, 16))
    assert len(calls) == 2                                 # step 1 and step 2 through the same weights


def test_outputs_are_valid_probabilities_and_risk():
    model = tiny().eval()
    with torch.no_grad():
        for n in (1, 2, 50):
            out = model(torch.randn(n, 16) * 3)
            h, s = out["hazards"], out["S"]
            assert ((h > 0) & (h < 1)).all()
            assert torch.allclose(s, torch.cumprod(1 - h, dim=1))
            assert (s[:, 1:] <= s[:, :-1]).all()
            assert torch.allclose(out["risk"], -s.sum(dim=1))
            assert torch.allclose(out["w_mor"].sum(), torch.tensor(1.0))


def test_zero_gene_family_has_no_head_and_trains_without_nan():
    model = tiny(family_sizes=[0, 5, 0]).train()
    assert sorted(model.cab.recon_heads) == ["1"]
    out = model(torch.randn(12, 16))
    assert out["recon"][0] is None and out["recon"][2] is None and out["recon"][1].shape == (5,)
    target = torch.randn(5)
    loss = nll_loss(out["hazards"], out["S"], [1], [0]) + 0.3 * (
        F.mse_loss(out["recon"][1], target) + sce_loss(out["recon"][1], target))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.cab.tokens.grad[0].abs().sum() > 0        # the empty family's token still gets survival gradient


def test_bad_config_and_bad_features():
    with pytest.raises(ConfigError):
        create_model("ghanet", family_sizes=[])
    with pytest.raises(ConfigError):
        create_model("ghanet", family_sizes=[1, 2], topk=0.0)
    with pytest.raises(ConfigError, match="known models: abmil, ghanet"):
        create_model("transmil")
    with pytest.raises(ConfigError, match="no option"):
        create_model("abmil", hidden=3)
    model = tiny()
    with pytest.raises(InputError, match="16"):
        model(torch.randn(5, 32))
    with pytest.raises(InputError):
        model(torch.randn(0, 16))


# ---------------------------------------------------------------- top-k genomic weights and gradients

@pytest.mark.parametrize("n,k,expected", [(1, 0.2, 1), (3, 0.2, 1), (10, 0.2, 2), (15, 0.2, 3), (11, 0.2, 3),
                                          (100, 0.2, 20), (7, 1.0, 7)])
def test_topk_count_is_ceil_at_least_one(n, k, expected):
    assert topk_count(n, k) == expected


def test_genomic_weights_keep_topk_softmax_and_are_detached():
    torch.manual_seed(1)
    assoc = torch.randn(3, 23, requires_grad=True)
    w = genomic_weights(assoc, 0.2)
    assert not w.requires_grad
    k = math.ceil(0.2 * 23)
    assert ((w > 0).sum(dim=1) == k).all()
    assert torch.allclose(w.sum(dim=1), torch.ones(3))
    for g in range(3):
        top = assoc[g].detach().topk(k).indices
        assert set(torch.nonzero(w[g]).flatten().tolist()) == set(top.tolist())
        assert torch.allclose(w[g, top], assoc[g, top].detach().softmax(0))


def test_survival_loss_reaches_cab_through_r2_only_not_through_the_mask():
    model = tiny(dropout=0.0).train()
    feats = torch.randn(20, 16)
    h_pre, hp_pre = model.embed_pre(feats)
    r2, assoc, _ = model.cab(h_pre)
    assert assoc.requires_grad                             # A itself is differentiable ...
    logits, _ = model.hsb(hp_pre, assoc, r2)
    h = torch.sigmoid(logits)
    loss = nll_loss(h, torch.cumprod(1 - h, 1), [2], [0])
    g_assoc, g_r2 = torch.autograd.grad(loss, [assoc, r2], allow_unused=True)
    assert g_assoc is None                                 # ... but the survival loss never uses it (detached mask)
    assert g_r2 is not None and g_r2.abs().sum() > 0       # fusion (f_GI + r2) / 2 carries survival gradient
    # end to end: survival loss alone updates CAB tokens and the shared cross attention (via r2)
    model.zero_grad()
    out = model(feats)
    nll_loss(out["hazards"], out["S"], [2], [0]).backward()
    assert model.cab.tokens.grad.abs().sum() > 0 and model.cab.mhca.to_k.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.cab.recon_heads.parameters())


@pytest.mark.parametrize("rule", ["ceil", "floor"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("reuse", [False, True])
def test_fast_forward_equals_textbook_forward_including_gradients(rule, train, reuse, monkeypatch):
    if reuse:   # the large-bag path (backward writes into forward buffers) on a tiny bag
        monkeypatch.setattr(patch_ops, "REUSE_MIN_ELEMENTS", 0)
        monkeypatch.setattr(patch_ops, "BLOCK_ELEMENTS", 5 * 32)   # several blocks of 5 rows
    model = tiny(seed=3, topk_rule=rule).train(train)
    feats = torch.randn(31, 16)
    feats[7] = feats[3]                                    # identical patches: tied scores in eval mode
    results = []
    for fwd in (model, lambda x: reference_forward(model, x)):
        model.zero_grad()
        torch.manual_seed(7)                               # identical dropout masks for both passes
        out = fwd(feats)
        loss = out["risk"].sum() + sum(r.square().sum() for r in out["recon"] if r is not None)
        loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast, g_fast), (ref, g_ref) = results
    for key in ("logits", "assoc", "w_mor"):
        assert torch.allclose(fast[key], ref[key], atol=1e-5), key
    for name in g_fast:
        assert torch.allclose(g_fast[name], g_ref[name], atol=1e-5, rtol=1e-4), name


def test_textbook_forward_with_plain_dropout_matches_in_eval_mode():
    model = tiny(seed=8).eval()
    feats = torch.randn(12, 16)
    with torch.no_grad():
        a, b = model(feats), reference_forward(model, feats, plain_dropout=True)
    assert torch.allclose(a["risk"], b["risk"], atol=1e-6)


def test_relu_dropout_statistics_gradient_and_eval():
    torch.manual_seed(0)
    x = torch.randn(400, 300, requires_grad=True)
    layer = ReLUDropout(0.25).train()
    torch.manual_seed(1)
    y = layer(x)
    kept = (y > 0)
    positive = x.detach() > 0
    assert not (kept & ~positive).any()                              # ReLU: nothing negative survives
    assert kept.sum().item() / positive.sum().item() == pytest.approx(0.75, abs=0.01)
    assert torch.allclose(y[kept], x.detach()[kept] / 0.75)         # inverted-dropout scaling
    y.sum().backward()
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75)) and (x.grad[~kept] == 0).all()
    torch.manual_seed(1)
    assert torch.equal(layer(x.detach()), y.detach())               # seeded like the rest of torch
    layer.eval()
    assert torch.equal(layer(x.detach()), F.relu(x.detach()))


def test_risk_is_invariant_to_patch_order():
    model = tiny(seed=4).eval()
    feats = torch.randn(40, 16)
    perm = torch.randperm(40)
    with torch.no_grad():
        a, b = model(feats), model(feats[perm])
    assert torch.allclose(a["risk"], b["risk"], atol=1e-6)
    with torch.no_grad():                                  # float16 bags are accepted (cast to the weights)
        assert torch.allclose(model(feats.half())["risk"], model(feats.half().float())["risk"])
    assert torch.allclose(a["w_mor"][perm], b["w_mor"], atol=1e-7)
    assert torch.allclose(a["assoc"][:, perm], b["assoc"], atol=1e-6)


def test_abmil_outputs_and_options():
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=16, n_bins=4, dim=32, dropout=0.25, family_sizes=[3, 4], topk=0.2)
    assert not model.needs_genomics and model.config == {"in_dim": 16, "n_bins": 4, "dim": 32, "dropout": 0.25}
    model.eval()
    feats = torch.randn(25, 16)
    with torch.no_grad():
        out = model(feats)
        out_p = model(feats.flip(0))
    assert out["hazards"].shape == (1, 4) and out["risk"].shape == (1,) and out["w_mor"].shape == (25,)
    assert torch.allclose(out["risk"], -out["S"].sum(1)) and torch.allclose(out["risk"], out_p["risk"], atol=1e-6)
    assert "recon" not in out and set(MODELS) >= {"ghanet", "abmil"}


# ---------------------------------------------------------------- checkpoints

# ---------------------------------------------------------------- learning

def test_tiny_ghanet_overfits_a_few_bags():
    model = tiny(seed=6, dropout=0.0).train()
    gen = torch.Generator().manual_seed(0)
    bags = [torch.randn(15 + 5 * i, 16, generator=gen) for i in range(4)]
    labels = [(0, 0), (1, 0), (2, 1), (3, 0)]
    targets = [[torch.randn(3, generator=gen), None, torch.randn(4, generator=gen)] for _ in bags]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def total():
        loss = 0.0
        for x, (y, c), tg in zip(bags, labels, targets, strict=False):
            out = model(x)
            loss = loss + nll_loss(out["hazards"], out["S"], [y], [c]) + 0.3 * sum(
                F.mse_loss(p, t) + sce_loss(p, t) for p, t in zip(out["recon"], tg, strict=False) if p is not None)
        return loss / len(bags)

    with torch.no_grad():
        first = float(total())
    for _ in range(60):
        opt.zero_grad()
        loss = total()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(total()) < 0.3 * first


def _cindex(time, event, risk):
    """Harrell's C (hand-written, for the test): comparable if the earlier time is an event."""
    num = den = 0.0
    for i in range(len(time)):
        if not event[i]:
            continue
        for j in range(len(time)):
            if time[i] < time[j]:
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


def _planted_cohort(n_cases=160, seed=0):
    """Bags whose fraction of 'signal' patches (shifted along one direction) sets the hazard."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    z = rng.uniform(size=n_cases)
    bags, genes = [], []
    for i in range(n_cases):
        n = int(rng.integers(20, 40))
        x = rng.normal(size=(n, 16))
        k = int(round(z[i] * 0.5 * n))
        x[:k] += 2.5 * direction
        bags.append(torch.tensor(x, dtype=torch.float32))
        genes.append(torch.tensor(np.r_[z[i] * np.array([2.0, -2.0, 1.0]) + 0.3 * rng.normal(size=3)],
                                  dtype=torch.float32))
    t_event = rng.exponential(30.0 * np.exp(-5.0 * z))      # months; hazard x e^5 from z = 0 to 1
    t_cens = rng.uniform(0, 40, size=n_cases)
    time = np.minimum(t_event, t_cens)
    cens = (t_cens < t_event).astype(int)
    edges = np.quantile(time[:80][cens[:80] == 0], [0.25, 0.5, 0.75])
    bins = np.digitize(time, edges)
    return bags, genes, time, cens, bins


def _fit_and_score(name, bags, genes, time, cens, bins, shuffle, seed=0):
    torch.manual_seed(seed)
    if name == "ghanet":
        model = create_model("ghanet", in_dim=16, family_sizes=[3, 0], dim=32, heads=2, dropout=0.1)
    else:
        model = create_model("abmil", in_dim=16, dim=32, dropout=0.1)
    train, val = np.arange(80), np.arange(80, len(bags))
    labels = np.stack([bins, cens], 1)
    if shuffle:
        labels[train] = labels[np.random.default_rng(seed).permutation(train)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(6):
        for i in rng.permutation(train):
            out = model(bags[i])
            loss = nll_loss(out["hazards"], out["S"], [labels[i, 0]], [labels[i, 1]])
            if name == "ghanet":
                loss = loss + 0.3 * (F.mse_loss(out["recon"][0], genes[i]) + sce_loss(out["recon"][0], genes[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        risk = [float(model(bags[i])["risk"]) for i in val]
    return _cindex(time[val], 1 - cens[val], risk)


@pytest.mark.slow  # 2 x 6 epochs over 80 bags per model (the fast tier keeps test_tiny_ghanet_overfits_a_few_bags)
@pytest.mark.parametrize("name", ["abmil", "ghanet"])
def test_planted_signal_is_learned_and_shuffled_labels_are_not(name):
    cohort = _planted_cohort()
    real = _fit_and_score(name, *cohort, shuffle=False)
    control = _fit_and_score(name, *cohort, shuffle=True)
    # true-hazard ordering reaches ~0.8 on this validation half; chance is 0.5
    assert real >= 0.72, (real, control)
    assert control < 0.65 and real > control + 0.12, (real, control)
