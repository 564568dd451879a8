"""HiCroPL ablation switches (paper Tables 4, 6, 7, 11, 12, 13) on a random:tiny CLIP.

Each switch is checked against expectations written here: which prompts a flow writes, parameter sets and counts,
which parameters get gradients in differentiable mode, the compression / single-scale equations (reference
LKP / mapper / attention from test_trainer_hicropl_model), the L1 / MSE / cosine terms by hand, and the targets of
the text consistency term. The published defaults are checked against the SPEC reference computation.
"""
import pytest
import torch
import torch.nn.functional as F

import clip
from test_trainer_hicropl_model import (  # noqa: F401 (tiny, frozen_text, images: the shared fixtures)
    CLASSES,
    build,
    frozen_text,
    images,
    make_cfg,
    ref_forward,
    ref_lkp,
    ref_mapper,
    ref_prompts,
    tiny,
)
from trainers.hicropl import (
    CACHE_ENV,
    IMAGENET_TEMPLATES,
    ConsistencyTarget,
    CustomCLIP,
    UserError,
    build_consistency_target,
    check_hicropl_cfg,
    hicropl_loss,
)

# the shared fixtures' model: J = 4 prompted layers, k = 2, m = 3
DEPTH, CROSS = 4, 2


def snapshot(pl):
    return ([p.detach().clone() for p in pl.cross_prompts_text], [p.detach().clone() for p in pl.cross_prompts_visual])


def written_layers(before, after):
    return [i for i, (b, a) in enumerate(zip(before, after)) if not torch.equal(b, a)]


def mapping_parameter_count(width_t, width_v, t2i=0, i2t=0, compression="lkp"):
    """Parameters of mappers + compression modules + proxies, counted from the module definitions (SPEC §3.1-3.3)."""
    def mapper(dq, dkv):  # linear_q/k/v, MHA in/out projections, 2 LN, FFN dq -> 4dq -> dq
        return (dq * dq + dq) + 2 * (dkv * dq + dq) + (3 * dq * dq + 3 * dq) + (dq * dq + dq) + 4 * dq \
            + (dq * 4 * dq + 4 * dq) + (4 * dq * dq + dq)

    def compressor(d):
        return {"lkp": (3 * d * d + 3 * d) + (d * d + d) + 4 * d + d,  # MHA, 2 LN, + its proxy token
                "mean": 0,
                "mlp": 2 * (d * d + d)}[compression]

    total = 0
    if t2i:
        total += mapper(width_v, width_t) + t2i * compressor(width_t)
    if i2t:
        total += mapper(width_t, width_v) + i2t * compressor(width_v)
    return total


# --- FLOW (Table 4) and "w/o BKF" (Table 11) ---------------------------------------------------------------------


@pytest.mark.parametrize("flow,text_written,visual_written", [
    ("t2i_i2t", [2, 3], [0, 1]),  # published: T->I on [0, k), I->T on [k, J)
    ("i2t_t2i", [0, 1], [2, 3]),  # reversed: the other tower's prompts are written in each segment
    ("t2i", [], [0, 1, 2, 3]),
    ("i2t", [0, 1, 2, 3], []),
    ("none", [], []),
])
def test_flow_writes_the_target_towers_prompts(tiny, frozen_text, images, flow, text_written, visual_written):
    model = build(tiny, frozen_text, FLOW=flow).train()
    pl = model.prompt_learner
    before = snapshot(pl)
    model(*images)
    after = snapshot(pl)
    assert written_layers(before[0], after[0]) == text_written
    assert written_layers(before[1], after[1]) == visual_written
    # mappers and compression modules exist exactly for the flows that have layers
    assert (pl.text2visual_net is not None) == bool(visual_written)
    assert (pl.visual2text_net is not None) == bool(text_written)
    assert len(pl.attn_pooling_text_nets) == len(pl.text_proxy_token) == len(visual_written)
    assert len(pl.attn_pooling_visual_nets) == len(pl.visual_proxy_token) == len(text_written)
    width_t, width_v = tiny.transformer.width, tiny.visual.width
    prompts = DEPTH * 3 * (width_t + width_v)
    expected = prompts + mapping_parameter_count(width_t, width_v, t2i=len(visual_written), i2t=len(text_written))
    assert sum(p.numel() for p in pl.parameters()) == expected


@pytest.mark.parametrize("flow", ["i2t_t2i", "t2i", "i2t"])
def test_differentiable_flows_reach_every_mapping_parameter(tiny, frozen_text, images, flow):
    model = build(tiny, frozen_text, FLOW=flow, MAPPER_MODE="differentiable").train()
    model(*images).backward()
    for name, param in model.prompt_learner.named_parameters():
        assert param.requires_grad and param.grad is not None, name
    assert all(p.grad is None for p in model.clip_model.parameters())


def test_reversed_flow_equations(tiny, frozen_text):
    """i2t_t2i: P_t[0..k-1] = M_I->T(P_t[0..k-1], LKP(P_v[0..k-1])), P_v[k..J-1] = M_T->I(P_v[k..], LKP(P_t[k..]))."""
    model = build(tiny, frozen_text, seed=2, FLOW="i2t_t2i", MAPPER_MODE="differentiable")
    pl = model.prompt_learner
    text, visual = pl()
    with torch.no_grad():
        knowledge_v = torch.cat([ref_lkp(pl.attn_pooling_visual_nets[i], pl.visual_proxy_token[i],
                                         pl.cross_prompts_visual[i]) for i in range(CROSS)])
        expected_text = ref_mapper(pl.visual2text_net, torch.cat(list(pl.cross_prompts_text[:CROSS])), knowledge_v)
        knowledge_t = torch.cat([ref_lkp(pl.attn_pooling_text_nets[i - CROSS], pl.text_proxy_token[i - CROSS],
                                         pl.cross_prompts_text[i]) for i in range(CROSS, DEPTH)])
        expected_visual = ref_mapper(pl.text2visual_net, torch.cat(list(pl.cross_prompts_visual[CROSS:])),
                                     knowledge_t)
    torch.testing.assert_close(torch.cat(text[:CROSS]).detach(), expected_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(visual[CROSS:]).detach(), expected_visual, atol=1e-5, rtol=1e-5)
    for i in range(CROSS, DEPTH):
        assert text[i] is pl.cross_prompts_text[i]
    for i in range(CROSS):
        assert visual[i] is pl.cross_prompts_visual[i]


def test_no_flow_is_independent_prompts_in_both_towers(tiny, frozen_text, images):
    """FLOW none (Table 11 w/o BKF): only the 2J prompt tensors exist, all are trained, and the encoders use them."""
    model = build(tiny, frozen_text, FLOW="none", MAPPER_MODE="differentiable").train()
    pl = model.prompt_learner
    names = sorted(name for name, _ in pl.named_parameters())
    assert names == sorted([f"cross_prompts_text.{i}" for i in range(DEPTH)]
                           + [f"cross_prompts_visual.{i}" for i in range(DEPTH)])
    text, visual = pl()
    assert all(a is b for a, b in zip(text, pl.cross_prompts_text))
    assert all(a is b for a, b in zip(visual, pl.cross_prompts_visual))
    logits, loss, _, _ = ref_forward(model, tiny, *images, snapshot(pl)[0], snapshot(pl)[1], lambd=12.0)
    total = model(*images)
    torch.testing.assert_close(total.detach(), loss, atol=1e-5, rtol=1e-5)
    total.backward()
    for name, param in pl.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# --- COMPRESSION (Table 7) ----------------------------------------------------------------------------------------


def test_mean_compression_is_the_average_of_the_layers_prompts(tiny, frozen_text):
    model = build(tiny, frozen_text, seed=3, COMPRESSION="mean", MAPPER_MODE="differentiable")
    pl = model.prompt_learner
    assert len(pl.text_proxy_token) == len(pl.visual_proxy_token) == 0
    assert not any("attn_pooling" in name for name, _ in pl.named_parameters())
    text, visual = pl()
    with torch.no_grad():
        knowledge = torch.stack([pl.cross_prompts_text[i].sum(0) / pl.n_ctx for i in range(CROSS)])
        expected = ref_mapper(pl.text2visual_net, torch.cat(list(pl.cross_prompts_visual[:CROSS])), knowledge)
    torch.testing.assert_close(torch.cat(visual[:CROSS]).detach(), expected, atol=1e-5, rtol=1e-5)


def test_mlp_compression_equation_and_parameters(tiny, frozen_text, images):
    model = build(tiny, frozen_text, seed=4, COMPRESSION="mlp", MAPPER_MODE="differentiable").train()
    pl = model.prompt_learner
    width_t, width_v = tiny.transformer.width, tiny.visual.width
    expected_count = DEPTH * 3 * (width_t + width_v) + mapping_parameter_count(
        width_t, width_v, t2i=CROSS, i2t=DEPTH - CROSS, compression="mlp")
    assert sum(p.numel() for p in pl.parameters()) == expected_count
    assert len(pl.text_proxy_token) == len(pl.visual_proxy_token) == 0
    text, _ = pl()
    with torch.no_grad():
        def mlp(net, x):  # Linear -> x * sigmoid(1.702 x) -> Linear, per token, then the mean over tokens
            hidden = x @ net.c_fc.weight.T + net.c_fc.bias
            return ((hidden * torch.sigmoid(1.702 * hidden)) @ net.c_proj.weight.T + net.c_proj.bias).mean(0)

        knowledge = torch.stack([mlp(pl.attn_pooling_visual_nets[i - CROSS], pl.cross_prompts_visual[i])
                                 for i in range(CROSS, DEPTH)])
        expected = ref_mapper(pl.visual2text_net, torch.cat(list(pl.cross_prompts_text[CROSS:])), knowledge)
    torch.testing.assert_close(torch.cat(text[CROSS:]).detach(), expected, atol=1e-5, rtol=1e-5)
    model(*images).backward()  # differentiable: the MLPs are trained like the LKPs
    for name, param in pl.attn_pooling_text_nets.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_released_mode_freezes_every_mapping_module_of_every_variant(tiny, frozen_text, images):
    for switches in ({"COMPRESSION": "mlp"}, {"FLOW": "i2t_t2i", "T2I_SCALE": "single"}, {"FLOW": "t2i"}):
        model = build(tiny, frozen_text, **switches).train()
        model(*images).backward()
        pl = model.prompt_learner
        prompts = {id(p) for p in list(pl.cross_prompts_text) + list(pl.cross_prompts_visual)}
        for name, param in pl.named_parameters():
            if id(param) in prompts:
                assert param.grad is not None, (switches, name)
            else:
                assert param.grad is None and not param.requires_grad, (switches, name)


# --- T2I_SCALE / I2T_SCALE (Table 6) ------------------------------------------------------------------------------


def test_single_scale_maps_each_layer_from_its_own_layer_only(tiny, frozen_text):
    model = build(tiny, frozen_text, seed=5, T2I_SCALE="single", MAPPER_MODE="differentiable")
    pl = model.prompt_learner
    multi = build(tiny, frozen_text, seed=5, MAPPER_MODE="differentiable").prompt_learner
    assert sum(p.numel() for p in pl.parameters()) == sum(p.numel() for p in multi.parameters())  # same modules
    _, visual = pl()
    with torch.no_grad():
        for i in range(CROSS):  # M_T->I(P_v[i], LKP_i(P_t[i])) with one source token
            knowledge = ref_lkp(pl.attn_pooling_text_nets[i], pl.text_proxy_token[i], pl.cross_prompts_text[i])
            expected = ref_mapper(pl.text2visual_net, pl.cross_prompts_visual[i], knowledge)
            torch.testing.assert_close(visual[i].detach(), expected, atol=1e-5, rtol=1e-5)
        # changing layer 1's text prompts leaves layer 0's mapped visual prompts alone (single) ...
        multi_before = multi()[1][0].clone()
        pl.cross_prompts_text[1].add_(1.0)
        multi.cross_prompts_text[1].add_(1.0)
        _, changed = pl()
        torch.testing.assert_close(changed[0], visual[0], atol=0, rtol=0)
        assert not torch.allclose(changed[1], visual[1])
        # ... while the multi-scale mapper mixes every layer's knowledge into every layer
        assert not torch.allclose(multi()[1][0], multi_before)
    # I2T_SCALE still multi: the text side is the published multi-scale mapping
    text_single = pl()[0]
    with torch.no_grad():
        knowledge = torch.cat([ref_lkp(pl.attn_pooling_visual_nets[i - CROSS], pl.visual_proxy_token[i - CROSS],
                                       pl.cross_prompts_visual[i]) for i in range(CROSS, DEPTH)])
        expected = ref_mapper(pl.visual2text_net, torch.cat(list(pl.cross_prompts_text[CROSS:])), knowledge)
    torch.testing.assert_close(torch.cat(text_single[CROSS:]).detach(), expected, atol=1e-5, rtol=1e-5)


# --- defaults = published HiCroPL -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["released", "differentiable"])
def test_published_switches_give_the_spec_logits_and_loss(tiny, frozen_text, images, mode):
    published = dict(FLOW="t2i_i2t", T2I_SCALE="multi", I2T_SCALE="multi", COMPRESSION="lkp",
                     CONSISTENCY_TARGET="descriptions", CONSISTENCY_CRITERION="cosine")
    assert all(make_cfg().TRAINER.HICROPL[key] == value for key, value in published.items())  # the defaults
    for_logits, for_loss = (build(tiny, frozen_text, seed=6, MAPPER_MODE=mode, **published).train() for _ in "ab")
    text, visual = ref_prompts(for_logits.prompt_learner)
    logits, loss, _, _ = ref_forward(for_logits, tiny, *images, text, visual, lambd=12.0)
    with torch.no_grad():  # in released mode each forward maps the prompts once, as ref_prompts did
        torch.testing.assert_close(for_logits(images[0]), logits, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(for_loss(*images), loss, atol=1e-5, rtol=1e-5)


# --- CONSISTENCY_CRITERION (Table 13) and LAMBD 0 (Table 11) -------------------------------------------------------


def test_consistency_criteria_by_hand():
    generator = torch.Generator().manual_seed(7)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=generator), dim=-1)
    logits, labels = torch.randn(3, 5, generator=generator), torch.tensor([0, 4, 2])
    f_img, v, f_txt, w = unit(3, 8), unit(3, 8), unit(5, 8), unit(5, 8)
    ce = F.cross_entropy(logits, labels)
    by_hand = {
        "cosine": lambda a, b: 1 - (a * b).sum(-1).mean(),  # unit rows: cos = dot product
        "l1": lambda a, b: (a - b).abs().sum() / a.numel(),
        "mse": lambda a, b: ((a - b) ** 2).sum() / a.numel(),
    }
    for criterion, distance in by_hand.items():
        total, terms = hicropl_loss(logits, labels, f_img, v, f_txt, w, 2.5, criterion)
        torch.testing.assert_close(terms["text_consistency"], distance(f_txt, w))
        torch.testing.assert_close(terms["image_consistency"], distance(f_img, v))
        torch.testing.assert_close(total, ce + 2.5 * (distance(f_txt, w) + distance(f_img, v)))
    total, _ = hicropl_loss(logits, labels, f_img, v, f_txt, w, 0.0, "mse")
    torch.testing.assert_close(total, ce)  # LAMBD 0: no consistency loss


def test_criterion_reaches_the_models_loss(tiny, frozen_text, images):
    model = build(tiny, frozen_text, seed=8, CONSISTENCY_CRITERION="l1", MAPPER_MODE="differentiable").train()
    _, terms = model(*images, return_terms=True)
    with torch.no_grad():
        _, _, _, text_features = model.forward_features(images[0])
    expected = (text_features.float() - frozen_text).abs().mean()
    torch.testing.assert_close(terms["text_consistency"], expected, atol=1e-6, rtol=1e-5)


# --- CONSISTENCY_TARGET (Table 12) ----------------------------------------------------------------------------------


def test_consistency_targets(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # the fixed targets go through the W cache
    names = ["red_circle", "square"]
    descriptions = [["a round red shape.", "a red disc.", "a red ring."], ["four equal sides."]]
    assert build_consistency_target("descriptions", tiny, names, descriptions) is None  # W itself
    with torch.no_grad():
        encode = lambda texts: F.normalize(tiny.encode_text(clip.tokenize(texts)).float(), dim=-1)
        template = build_consistency_target("template", tiny, names, descriptions)()
        torch.testing.assert_close(template, encode(["a photo of a red circle.", "a photo of a square."]),
                                   atol=1e-5, rtol=1e-5)
        ensemble = build_consistency_target("imagenet_templates", tiny, names, descriptions)()
        for row, name in zip(ensemble, ["red circle", "square"]):
            expected = F.normalize(encode([t.format(name) for t in IMAGENET_TEMPLATES]).mean(0), dim=-1)
            torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-5)
        target = build_consistency_target("random_description", tiny, names, descriptions)
        sentences = encode([s for group in descriptions for s in group])
        torch.manual_seed(0)
        draws = [target.train()() for _ in range(30)]
    seen = set()
    for draw in draws:  # one of the class's own sentences per class, a new draw per step
        first = [i for i in range(3) if torch.allclose(draw[0], sentences[i], atol=1e-5)]
        assert len(first) == 1
        seen.add(first[0])
        torch.testing.assert_close(draw[1], sentences[3], atol=1e-5, rtol=1e-5)
    assert seen == {0, 1, 2}
    # eval mode: the per-class average (W of the same sentences)
    torch.testing.assert_close(target.eval()()[0], F.normalize(sentences[:3].mean(0), dim=-1), atol=1e-5, rtol=1e-5)


def test_consistency_target_changes_the_loss_not_the_logits(tiny, frozen_text, images):
    generator = torch.Generator().manual_seed(9)
    other = F.normalize(torch.randn(len(CLASSES), tiny.embed_dim, generator=generator), dim=-1)
    reference = build(tiny, frozen_text, seed=10, MAPPER_MODE="differentiable").train()
    torch.manual_seed(10)
    cfg = make_cfg(CONSISTENCY_TARGET="template", MAPPER_MODE="differentiable")
    model = CustomCLIP(cfg, CLASSES, tiny, frozen_text, consistency_target=ConsistencyTarget(other)).train()
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        _, _, _, text_features = model.forward_features(images[0])
        _, terms = model(*images, return_terms=True)
        torch.testing.assert_close(terms["text_consistency"],
                                   1 - F.cosine_similarity(text_features.float(), other, dim=-1).mean())
        reference.eval(), model.eval()
        torch.testing.assert_close(model(images[0]), reference(images[0]), atol=0, rtol=0)


# --- validation and precision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["FLOW", "T2I_SCALE", "I2T_SCALE", "COMPRESSION", "CONSISTENCY_TARGET",
                                 "CONSISTENCY_CRITERION"])
def test_unknown_switch_values_are_one_line_errors(key):
    with pytest.raises(UserError, match=rf"^TRAINER\.HICROPL\.{key} is 'bogus'; choose one of [a-z0-9_, ]+$"):
        check_hicropl_cfg(make_cfg(**{key: "bogus"}).TRAINER.HICROPL)


def test_variants_run_under_bf16_autocast(tiny, frozen_text, images):
    model = build(tiny, frozen_text, PREC="bf16", FLOW="i2t_t2i", COMPRESSION="mlp", I2T_SCALE="single",
                  CONSISTENCY_CRITERION="mse", MAPPER_MODE="differentiable").train()
    loss = model(*images)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.prompt_learner.parameters())


@pytest.mark.parametrize("switches", [{"FLOW": "i2t_t2i"}, {"FLOW": "t2i"}, {"FLOW": "i2t"}, {"FLOW": "none"},
                                      {"COMPRESSION": "mean"}, {"COMPRESSION": "mlp"},
                                      {"T2I_SCALE": "single", "I2T_SCALE": "single"}])
@pytest.mark.parametrize("mode", ["released", "differentiable"])
def test_variant_prompt_learners_run_in_fp16(tiny, frozen_text, mode, switches):
    """PREC fp16 converts the whole prompt learner to fp16 (CUDA only end to end; the learner alone runs on CPU)."""
    pl = build(tiny, frozen_text, MAPPER_MODE=mode, **switches).prompt_learner.half()
    text, visual = pl()
    assert all(p.dtype == torch.float16 and torch.isfinite(p).all() for p in text + visual)
