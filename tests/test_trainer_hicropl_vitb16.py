"""Full-size checks with random:ViT-B/16 (built once): parameter counts (SPEC §3.1), learned state-dict keys and
shapes (SPEC §7.2), initial-value statistics, released-layout checkpoint (624 keys) and checkpoint size."""
import io
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import clip
from trainers.config import add_trainer_cfg
from trainers.hicropl import CustomCLIP

CLASSES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings"]
B2N = {"N_CTX": 16, "PROMPT_DEPTH": 12, "CROSS_LAYER": 6}
XD = {"N_CTX": 2, "PROMPT_DEPTH": 6, "CROSS_LAYER": 5}


@pytest.fixture(scope="module")
def vitb16():
    model, _ = clip.load("random:ViT-B/16")
    return model


def build(backbone, mode="differentiable", **hicropl):
    cfg = CN()
    cfg.TRAINER = CN()
    add_trainer_cfg(cfg)
    hc = cfg.TRAINER.HICROPL
    hc.PREC, hc.MAPPER_MODE, hc.CTX_INIT = "fp32", mode, "a photo of a"
    for key, value in hicropl.items():
        setattr(hc, key, value)
    torch.manual_seed(0)
    frozen_text = F.normalize(torch.randn(len(CLASSES), backbone.embed_dim), dim=-1)
    return CustomCLIP(cfg, CLASSES, backbone, frozen_text)


def expected_learned_keys(m, depth, cross):
    """SPEC §7.2 learned entries (ViT-B/16 widths 512 / 768), without the duplicate `ctx` and the token buffers."""
    def mapper(q, kv):
        return {
            "attn.in_proj_weight": (3 * q, q), "attn.in_proj_bias": (3 * q,), "attn.out_proj.weight": (q, q),
            "attn.out_proj.bias": (q,), "linear_q.weight": (q, q), "linear_q.bias": (q,), "linear_k.weight": (q, kv),
            "linear_k.bias": (q,), "linear_v.weight": (q, kv), "linear_v.bias": (q,), "ln_1.weight": (q,),
            "ln_1.bias": (q,), "ffn.c_fc.weight": (4 * q, q), "ffn.c_fc.bias": (4 * q,),
            "ffn.c_proj.weight": (q, 4 * q), "ffn.c_proj.bias": (q,), "ln_2.weight": (q,), "ln_2.bias": (q,),
        }

    def lkp(d):
        return {"attn.in_proj_weight": (3 * d, d), "attn.in_proj_bias": (3 * d,), "attn.out_proj.weight": (d, d),
                "attn.out_proj.bias": (d,), "ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,),
                "ln_2.bias": (d,)}

    keys = OrderedDict()
    keys.update({f"cross_prompts_text.{i}": (m, 512) for i in range(depth)})
    keys.update({f"cross_prompts_visual.{i}": (m, 768) for i in range(depth)})
    keys.update({f"text2visual_net.{k}": v for k, v in mapper(768, 512).items()})
    keys.update({f"visual2text_net.{k}": v for k, v in mapper(512, 768).items()})
    for i in range(cross):
        keys.update({f"attn_pooling_text_nets.{i}.{k}": v for k, v in lkp(512).items()})
    for i in range(depth - cross):
        keys.update({f"attn_pooling_visual_nets.{i}.{k}": v for k, v in lkp(768).items()})
    keys.update({f"text_proxy_token.{i}": (1, 512) for i in range(cross)})
    keys.update({f"visual_proxy_token.{i}": (1, 768) for i in range(depth - cross)})
    return OrderedDict((f"prompt_learner.{k}", v) for k, v in keys.items())


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_counts_match_spec(vitb16):
    model = build(vitb16, **B2N)
    pl = model.prompt_learner
    assert n_params(pl.text2visual_net) == 8_466_432
    assert n_params(pl.visual2text_net) == 4_202_496
    assert [n_params(net) for net in pl.attn_pooling_text_nets] == [1_052_672] * 6
    assert [n_params(net) for net in pl.attn_pooling_visual_nets] == [2_365_440] * 6
    assert n_params(pl.text_proxy_token) + n_params(pl.visual_proxy_token) == 7_680
    assert n_trainable(model) == 33_431_040  # differentiable: everything of the prompt learner learns
    assert n_trainable(build(vitb16, mode="released", **B2N)) == 245_760  # released: only the 2J prompts
    assert n_trainable(build(vitb16, **XD)) == 20_316_416


@pytest.mark.parametrize("config", [B2N, XD], ids=["m16_J12_k6", "m2_J6_k5"])
def test_learned_state_dict_keys_and_shapes(vitb16, config):
    state = build(vitb16, **config).state_dict()
    expected = expected_learned_keys(config["N_CTX"], config["PROMPT_DEPTH"], config["CROSS_LAYER"])
    assert list(state) == list(expected)  # same names, same order as the released checkpoints
    assert {k: tuple(v.shape) for k, v in state.items()} == dict(expected)


@torch.no_grad()
def test_initial_values(vitb16):
    pl = build(vitb16, **B2N).prompt_learner
    for prompts in (pl.cross_prompts_text, pl.cross_prompts_visual):
        assert all(abs(float(p.std()) - 0.02) < 0.002 and abs(float(p.mean())) < 0.002 for p in prompts)
    for proxy in list(pl.text_proxy_token) + list(pl.visual_proxy_token):
        assert abs(float(proxy.std()) - 1.0) < 0.15
    # PyTorch defaults (never changed in the released code): biases of the attention projections 0, LayerNorm 1 / 0,
    # Linear weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    mapper = pl.text2visual_net
    assert not mapper.attn.in_proj_bias.any() and not mapper.attn.out_proj.bias.any()
    assert torch.equal(mapper.ln_1.weight, torch.ones(768)) and not mapper.ln_1.bias.any()
    assert float(mapper.linear_k.weight.abs().max()) <= 512 ** -0.5
    assert float(mapper.ffn.c_proj.weight.abs().max()) <= 3072 ** -0.5


def test_released_checkpoint_layout_loads(vitb16):
    source = build(vitb16, mode="released", **B2N)
    released = OrderedDict(logit_scale=vitb16.logit_scale.detach())
    released["prompt_learner.ctx"] = source.prompt_learner.ctx.detach()
    released["prompt_learner.token_prefix"] = torch.zeros(len(CLASSES), 1, 512)
    released["prompt_learner.token_suffix"] = torch.zeros(len(CLASSES), 60, 512)
    released.update(source.state_dict())
    visual = vitb16.visual.state_dict()
    released.update((f"prompt_learner.ZS_image_encoder.{k}", v) for k, v in visual.items())
    released.update((f"image_encoder.{k}", v) for k, v in visual.items())
    released.update((f"text_encoder.{k}", v) for k, v in vitb16.state_dict().items()
                    if not k.startswith(("visual.", "token_embedding.", "logit_scale")))
    assert len(visual) == 152 and len(released) == 624  # SPEC §7.2
    target = build(vitb16, mode="released", **B2N)
    torch.manual_seed(1)
    for p in target.prompt_learner.parameters():
        torch.nn.init.normal_(p)
    target.load_state_dict(released)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_checkpoint_is_a_small_fraction_of_the_frozen_model(vitb16):
    buffer = io.BytesIO()
    torch.save({"state_dict": build(vitb16, **B2N).state_dict()}, buffer)
    frozen = sum(t.numel() * t.element_size() for t in vitb16.state_dict().values())
    assert buffer.tell() < 0.25 * frozen  # 33.4 M learned / mapping values vs 150 M frozen CLIP values
