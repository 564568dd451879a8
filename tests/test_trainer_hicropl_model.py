"""HiCroPL model (random:tiny CLIP): LKP / mapper equations, init facts, the two mapper modes, gradients, fused logits,
loss, eval cache, checkpoints (ours and the released layout), config validation, W cache.

Expectations are computed independently here from the SPEC equations (reference attention written out by hand).
"""
import copy
import math
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import clip
from dassl.utils import load_checkpoint
from trainers.config import add_trainer_cfg
from trainers.hicropl import (
    CACHE_ENV,
    CustomCLIP,
    HierarchicalKnowledgeMapper,
    LayerKnowledgeProxy,
    check_hicropl_cfg,
    frozen_text_features,
)

CLASSES = ["circle", "square", "triangle", "star", "hexagon"]


def make_cfg(**hicropl):
    cfg = CN()
    cfg.TRAINER = CN()
    add_trainer_cfg(cfg)
    hc = cfg.TRAINER.HICROPL
    hc.N_CTX, hc.PROMPT_DEPTH, hc.CROSS_LAYER, hc.CTX_INIT, hc.PREC, hc.LAMBD = 3, 4, 2, "", "fp32", 12.0
    for key, value in hicropl.items():
        setattr(hc, key, value)
    return cfg


@pytest.fixture(scope="module")
def tiny():
    model, _ = clip.load("random:tiny")
    return model


@pytest.fixture(scope="module")
def frozen_text(tiny):
    generator = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(len(CLASSES), tiny.embed_dim, generator=generator), dim=-1)


@pytest.fixture(scope="module")
def images(tiny):
    generator = torch.Generator().manual_seed(1)
    r = tiny.visual.input_resolution
    return torch.randn(4, 3, r, r, generator=generator), torch.tensor([0, 1, 2, 4])


def build(tiny, frozen_text, seed=0, **hicropl):
    torch.manual_seed(seed)
    return CustomCLIP(make_cfg(**hicropl), CLASSES, tiny, frozen_text)


# --- independent reference implementations of the SPEC equations --------------------------------------------------


def ref_layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_attention(mha, q, k, v):
    """Multi-head attention from the module's weights: in-projection, per-head softmax(QK^T / sqrt(d_h)) V, out-proj."""
    width, heads = q.shape[-1], mha.num_heads
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    split = lambda x: x.reshape(x.shape[0], heads, width // heads).transpose(0, 1)  # (heads, n, d_h)
    qh, kh, vh = split(q @ wq.T + bq), split(k @ wk.T + bk), split(v @ wv.T + bv)
    weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(width // heads), dim=-1)
    out = (weights @ vh).transpose(0, 1).reshape(q.shape[0], width)
    return out @ mha.out_proj.weight.T + mha.out_proj.bias


def ref_lkp(lkp, proxy, prompts):  # SPEC §3.2
    ln1 = lambda x: ref_layer_norm(x, lkp.ln_1)
    return ref_layer_norm(proxy + ref_attention(lkp.attn, ln1(proxy), ln1(prompts), ln1(prompts)), lkp.ln_2)


def ref_mapper(mapper, queries, sources):  # SPEC §3.3
    linear = lambda layer, x: x @ layer.weight.T + layer.bias
    q, k, v = linear(mapper.linear_q, queries), linear(mapper.linear_k, sources), linear(mapper.linear_v, sources)
    ln1 = lambda x: ref_layer_norm(x, mapper.ln_1)
    q = q + ref_attention(mapper.attn, ln1(q), ln1(k), ln1(v))
    hidden = linear(mapper.ffn.c_fc, ref_layer_norm(q, mapper.ln_2))
    return q + linear(mapper.ffn.c_proj, hidden * torch.sigmoid(1.702 * hidden))


def ref_prompts(pl):
    """SPEC §3.4 from the current parameters: (text prompts J x (m, D_t), visual prompts J x (m, D_v))."""
    k, depth, m = pl.cross_layer, pl.depth, pl.n_ctx
    text = [p.detach().clone() for p in pl.cross_prompts_text]
    visual = [p.detach().clone() for p in pl.cross_prompts_visual]
    with torch.no_grad():
        text_knowledge = torch.cat([ref_lkp(pl.attn_pooling_text_nets[i], pl.text_proxy_token[i], text[i])
                                    for i in range(k)])
        mapped = ref_mapper(pl.text2visual_net, torch.cat(visual[:k]), text_knowledge)
        visual_knowledge = torch.cat([ref_lkp(pl.attn_pooling_visual_nets[i - k], pl.visual_proxy_token[i - k],
                                              visual[i]) for i in range(k, depth)])
        mapped_text = ref_mapper(pl.visual2text_net, torch.cat(text[k:]), visual_knowledge)
    visual[:k] = list(mapped.view(k, m, -1))
    text[k:] = list(mapped_text.view(depth - k, m, -1))
    return text, visual


def ref_forward(model, tiny, image, labels, text, visual, lambd):
    """SPEC §4.1 + §4.3 from prompts: logits and loss; also the Eq. 5 consistency term."""
    with torch.no_grad():
        norm = lambda x: x / x.norm(dim=-1, keepdim=True)
        w = model.frozen_text
        w_p = norm(tiny.encode_text(model.prompt_learner.tokenized_prompts, text))
        v_p = norm(tiny.encode_image(image, visual))
        v = norm(tiny.encode_image(image))
        f_txt, f_img = norm(w_p + w), norm(v_p + v)
        logits = tiny.logit_scale.exp() * f_img @ f_txt.T
        cos = lambda a, b: (norm(a) * norm(b)).sum(-1)
        consistency = (1 - cos(f_txt, w).mean()) + (1 - cos(f_img, v).mean())
        eq5 = 2 - cos(v + v_p, v_p).mean() - cos(w + w_p, w_p).mean()
        loss = F.cross_entropy(logits, labels) + lambd * consistency
    return logits, loss, consistency, eq5


# --- tests ----------------------------------------------------------------------------------------------------------


def test_lkp_and_mapper_follow_the_spec_equations():
    torch.manual_seed(0)
    lkp = LayerKnowledgeProxy(64, 8)
    proxy, prompts = torch.randn(1, 64), torch.randn(5, 64)
    torch.testing.assert_close(lkp(proxy, prompts), ref_lkp(lkp, proxy, prompts), atol=1e-5, rtol=1e-5)
    mapper = HierarchicalKnowledgeMapper(48, 64, 8)
    queries, sources = torch.randn(12, 48), torch.randn(3, 64)
    torch.testing.assert_close(mapper(queries, sources), ref_mapper(mapper, queries, sources), atol=1e-5, rtol=1e-5)


def test_released_initialisation_facts(tiny, frozen_text):
    pl = build(tiny, frozen_text, PROMPT_DEPTH=4, CROSS_LAYER=2).prompt_learner

    def same_values_separate_storage(tensors):
        tensors = list(tensors)
        assert all(torch.equal(t, tensors[0]) for t in tensors)
        assert len({t.data_ptr() for t in tensors}) == len(tensors)

    same_values_separate_storage(pl.cross_prompts_visual)
    same_values_separate_storage(pl.text_proxy_token)
    same_values_separate_storage(pl.visual_proxy_token)
    for nets in (pl.attn_pooling_text_nets, pl.attn_pooling_visual_nets):
        for name in nets[0].state_dict():
            same_values_separate_storage(net.state_dict()[name] for net in nets)
    text = list(pl.cross_prompts_text)
    assert all(not torch.equal(text[i], text[j]) for i in range(len(text)) for j in range(i))
    assert pl.ctx is pl.cross_prompts_text[0]


def test_ctx_init_quirk(tiny, frozen_text):
    pl = build(tiny, frozen_text, N_CTX=2, CTX_INIT="a photo of a").prompt_learner
    tokens = clip.tokenize(["a photo of a"])
    with torch.no_grad():
        expected = tiny.token_embedding(tokens)[0, 1:3]
    torch.testing.assert_close(pl.ctx.detach(), expected)
    assert torch.equal(pl.tokenized_prompts, clip.tokenize([f"a photo of a {c}." for c in CLASSES]))
    pl = build(tiny, frozen_text, N_CTX=5, CTX_INIT="a photo of a").prompt_learner  # m > 4: ignored
    assert torch.equal(pl.tokenized_prompts, clip.tokenize([f"X X X X X {c}." for c in CLASSES]))
    with pytest.raises(ValueError, match="fewer than N_CTX"):
        build(tiny, frozen_text, N_CTX=3, CTX_INIT="a photo")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"CROSS_LAYER": 5, "PROMPT_DEPTH": 4}, "CROSS_LAYER"),
        ({"PROMPT_DEPTH": 5, "CROSS_LAYER": 2}, "exceeds the backbone's depth"),
        ({"N_CTX": 74}, "77-token context for class"),
        ({"MAPPER_MODE": "frozen"}, "MAPPER_MODE"),
        ({"PREC": "fp64"}, "PREC"),
        ({"MAPPER_HEADS": 3}, "must divide the text width"),
    ],
)
def test_config_errors(tiny, frozen_text, overrides, message):
    with pytest.raises(ValueError, match=message):
        build(tiny, frozen_text, **overrides)


def test_precision_needs_cuda_where_released_does():
    for prec in ("fp16", "amp"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            check_hicropl_cfg(make_cfg(PREC=prec).TRAINER.HICROPL, device=torch.device("cpu"))
    for prec in ("fp32", "bf16"):
        check_hicropl_cfg(make_cfg(PREC=prec).TRAINER.HICROPL, device=torch.device("cpu"))


def test_released_mode_writes_mapped_prompts_and_only_prompts_learn(tiny, frozen_text, images):
    model = build(tiny, frozen_text).train()
    pl = model.prompt_learner
    k = pl.cross_layer
    expected_text, expected_visual = ref_prompts(pl)
    loss = model(*images)
    for i in range(pl.depth):  # after a forward the stored prompts are the mapper outputs (SPEC §3.5)
        torch.testing.assert_close(pl.cross_prompts_visual[i].detach(), expected_visual[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pl.cross_prompts_text[i].detach(), expected_text[i], atol=1e-5, rtol=1e-5)
    assert not torch.equal(pl.cross_prompts_visual[0], pl.cross_prompts_visual[k])  # the mapping changed them
    loss.backward()
    prompts = {id(p) for p in list(pl.cross_prompts_text) + list(pl.cross_prompts_visual)}
    for name, param in model.named_parameters():
        if id(param) in prompts:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable == pl.depth * pl.n_ctx * (tiny.transformer.width + tiny.visual.width)


def test_differentiable_mode_trains_mappers_lkp_and_proxies(tiny, frozen_text, images):
    model = build(tiny, frozen_text, MAPPER_MODE="differentiable").train()
    # At initialisation the deep visual prompts of layers [k, L) are equal (SPEC: one init copied per layer), so their
    # summaries are equal, the vision->text attention is uniform whatever its keys, and linear_k's gradient is exactly
    # zero. After any training step they differ; make them differ here so every parameter's gradient can show.
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for prompt in list(model.prompt_learner.cross_prompts_visual) + list(model.prompt_learner.cross_prompts_text):
            prompt.add_(0.02 * torch.randn(prompt.shape, generator=generator))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(*images).backward()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was modified by the forward"
    for name, param in model.prompt_learner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name, param in model.clip_model.named_parameters():
        assert param.grad is None and not param.requires_grad, name


def test_both_modes_give_the_same_logits_on_the_same_parameters(tiny, frozen_text, images):
    released = build(tiny, frozen_text, seed=3).train()
    differentiable = build(tiny, frozen_text, seed=4, MAPPER_MODE="differentiable").train()
    differentiable.load_state_dict(released.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(released(images[0]), differentiable(images[0]), atol=1e-4, rtol=1e-5)


def test_logits_and_loss_match_spec(tiny, frozen_text, images):
    model = build(tiny, frozen_text, seed=5, MAPPER_MODE="differentiable", LAMBD=7.0).train()
    text, visual = ref_prompts(model.prompt_learner)
    logits, loss, consistency, eq5 = ref_forward(model, tiny, *images, text, visual, lambd=7.0)
    with torch.no_grad():
        torch.testing.assert_close(model(images[0]), logits, atol=1e-4, rtol=1e-5)
        total, terms = model(*images, return_terms=True)
    torch.testing.assert_close(total, loss, atol=1e-5, rtol=1e-5)
    consistency_terms = terms["text_consistency"] + terms["image_consistency"]
    torch.testing.assert_close(consistency_terms, consistency, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(consistency, eq5, atol=1e-6, rtol=1e-6)  # code form == paper Eq. 5


def test_eval_runs_prompt_learner_and_text_tower_once(tiny, frozen_text, images):
    model = build(tiny, frozen_text, seed=6, MAPPER_MODE="differentiable")
    calls = []
    model.prompt_learner.register_forward_hook(lambda *args: calls.append(1))
    image = images[0]
    with torch.no_grad():
        uncached = torch.cat([model.train()(image[:2]), model(image[2:])])
        calls.clear()
        model.eval()
        cached = torch.cat([model(image[:2]), model(image[2:])])
        assert len(calls) == 1
        torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
        model.load_state_dict(model.state_dict())  # loading parameters drops the cache
        model(image)
        assert len(calls) == 2
        model.train().eval()  # so does a round trip through train mode
        model(image)
        assert len(calls) == 3


def test_checkpoint_holds_only_learned_tensors_and_loads_strictly(tiny, frozen_text, images):
    model = build(tiny, frozen_text, seed=7)
    state = model.state_dict()
    assert all(key.startswith("prompt_learner.") for key in state)
    assert not any("token_prefix" in key or "token_suffix" in key or key.endswith(".ctx") for key in state)
    learned = {f"prompt_learner.{name}" for name, _ in model.prompt_learner.named_parameters()}
    assert set(state) == learned
    other = build(tiny, frozen_text, seed=8)
    other.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(images[0]), model.eval()(images[0]))

    broken = OrderedDict(state)
    del broken["prompt_learner.text2visual_net.ln_2.bias"]
    broken["prompt_learner.cross_prompts_visual.1"] = torch.zeros(7, 3)
    broken["prompt_learner.something_new"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        other.load_state_dict(broken)
    for key in ("text2visual_net.ln_2.bias", "cross_prompts_visual.1 (7, 3)", "something_new"):
        assert key in str(info.value)


def released_layout(model, tiny, n_cls):
    """A released-code CustomCLIP state dict (SPEC §7.2 key layout) holding `model`'s parameters."""
    pl = model.prompt_learner
    m, width = pl.n_ctx, tiny.transformer.width
    state = OrderedDict(logit_scale=tiny.logit_scale.detach().clone())
    state["prompt_learner.ctx"] = pl.ctx.detach().clone()
    state["prompt_learner.token_prefix"] = torch.randn(n_cls, 1, width)
    state["prompt_learner.token_suffix"] = torch.randn(n_cls, 76 - m, width)
    for key, value in pl.state_dict().items():
        state[f"prompt_learner.{key}"] = value.clone()
    for key, value in tiny.visual.state_dict().items():
        state[f"prompt_learner.ZS_image_encoder.{key}"] = value.clone()
    for key, value in tiny.visual.state_dict().items():
        state[f"image_encoder.{key}"] = value.clone()
    for key, value in tiny.state_dict().items():
        if not key.startswith(("visual.", "token_embedding.", "logit_scale")):
            state[f"text_encoder.{key}"] = value.clone()
    return state


def test_released_checkpoint_loads_to_the_same_logits(tiny, frozen_text, images):
    source = build(tiny, frozen_text, seed=9)
    state = released_layout(source, tiny, len(CLASSES))
    target = build(tiny, frozen_text, seed=10)
    target.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(images[0]), source.eval()(images[0]))

    del state["prompt_learner.cross_prompts_text.0"]  # `ctx` alone is enough (same tensor in the released code)
    build(tiny, frozen_text, seed=11).load_state_dict(state)
    state["prompt_learner.cross_prompts_text.0"] = state["prompt_learner.ctx"] + 1
    with pytest.raises(ValueError, match="ctx differs"):
        target.load_state_dict(state)


def test_separate_teacher_is_used_and_shared_one_is_not_copied(tiny, frozen_text, images):
    shared = build(tiny, frozen_text)
    n_clip = sum(p.numel() for p in tiny.parameters())
    n_learner = sum(p.numel() for p in shared.prompt_learner.parameters())
    assert sum(p.numel() for p in shared.parameters()) == n_clip + n_learner
    teacher = copy.deepcopy(tiny)
    with torch.no_grad():
        teacher.visual.proj.mul_(-1)
    torch.manual_seed(0)
    separate = CustomCLIP(make_cfg(), CLASSES, tiny, frozen_text, teacher=teacher)
    expected = F.normalize(teacher.encode_image(images[0]), dim=-1)
    torch.testing.assert_close(separate.teacher_features(images[0]), expected)


def test_bf16_autocast_runs_on_cpu(tiny, frozen_text, images):
    model = build(tiny, frozen_text, PREC="bf16", MAPPER_MODE="differentiable").train()
    loss = model(*images)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.prompt_learner.parameters())
    assert model.eval()(images[0]).dtype == torch.float32


def test_frozen_text_features_averaged_and_cached(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    sentences = [["a red circle.", "a round disc.", "a round disc."], ["a blue square."]]
    weights = frozen_text_features(tiny, sentences)
    with torch.no_grad():  # SPEC §4.2: normalise each sentence feature, average, normalise
        expected = []
        for group in sentences:
            features = tiny.encode_text(clip.tokenize(group))
            features = features / features.norm(dim=-1, keepdim=True)
            mean = features.mean(0)
            expected.append(mean / mean.norm())
    torch.testing.assert_close(weights, torch.stack(expected), atol=1e-6, rtol=1e-5)
    files = list((tmp_path / "text_features").glob("*.pt"))
    assert len(files) == 1
    capsys.readouterr()
    torch.testing.assert_close(frozen_text_features(tiny, sentences), weights)
    assert "loaded from" in capsys.readouterr().out
    frozen_text_features(tiny, sentences[::-1])  # other class list -> other key
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        other.ln_final.bias.add_(0.1)
    frozen_text_features(other, sentences)  # other text-tower weights -> other key
    assert len(list((tmp_path / "text_features").glob("*.pt"))) == 3
    assert not list((tmp_path / "text_features").glob("*.tmp"))


def test_released_checkpoint_file_with_pickled_objects(tiny, frozen_text, images, tmp_path):
    """A released-code checkpoint file: pickled scheduler objects of classes that do not exist here (SPEC F13)."""
    module = types.ModuleType("released_dassl_lr_scheduler")
    exec("class ConstantWarmupScheduler:\n    def __init__(self):\n        self.successor = {'last_epoch': 5}",
         module.__dict__)
    sys.modules[module.__name__] = module
    source = build(tiny, frozen_text, seed=12)
    path = tmp_path / "model-best.pth.tar"
    torch.save({"state_dict": released_layout(source, tiny, len(CLASSES)), "epoch": 5,
                "scheduler": module.ConstantWarmupScheduler(), "val_result": None}, path)
    del sys.modules[module.__name__]
    checkpoint = load_checkpoint(str(path))  # the engine's reader
    assert checkpoint["epoch"] == 5
    target = build(tiny, frozen_text, seed=13)
    target.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(images[0]), source.eval()(images[0]))
