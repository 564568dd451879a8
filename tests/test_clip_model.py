"""clip.model: equivalence with openai-clip's reference model.py, prompt-injection semantics, precision handling.

The reference is the installed openai-clip distribution's `model.py`, loaded by file path (the repo's `clip/` package
shadows its module name, and its `clip.py` needs pkg_resources). Its blocks are sequence-first `nn.MultiheadAttention`
blocks, so the manual prompt computations below share no code with ours.
"""

import importlib.metadata
import importlib.util

import pytest
import torch

from clip.model import (CLIP, CLIPConfig, ModifiedResNet, Transformer, build_model, config_from_state_dict,
                        convert_weights)
from clip.pretrained import build_random
from clip.tokenizer import tokenize

TINY_RESNET = CLIPConfig(embed_dim=32, image_resolution=64, vision_layers=(1, 2, 1, 1), vision_width=8,
                         vision_heads=4, vision_patch_size=None, context_length=77, vocab_size=49408,
                         transformer_width=64, transformer_heads=1, transformer_layers=2)
TEXTS = ["a photo of a dog.", "x", "a long and winding sentence, with commas; and more words than the others have!"]


def load_reference_module(name: str):
    distribution = importlib.metadata.distribution("openai-clip")
    file = next(f for f in distribution.files if str(f) == f"clip/{name}.py")
    spec = importlib.util.spec_from_file_location(f"openai_clip_reference_{name}", distribution.locate_file(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return load_reference_module("model")


def twin_models(reference, state_dict):
    """(ours, reference) on identical float32 weights. The reference's build_model rounds weights to fp16 before
    loading; ours is built from the reference's resulting state dict, so both see exactly the same numbers."""
    ref_model = reference.build_model({k: v.clone() for k, v in state_dict.items()}).float().eval()
    return build_model(ref_model.state_dict()).eval(), ref_model


def randomize_batchnorms(state_dict, generator):
    """CLIP's init zeroes every residual branch's last BN; random BN statistics make all convolutions matter."""
    out = dict(state_dict)
    for key, value in state_dict.items():
        if ".bn" in key or ".downsample.1." in key:
            if key.endswith(("weight", "running_var")):
                out[key] = 0.5 + torch.rand(value.shape, generator=generator)
            elif key.endswith(("bias", "running_mean")):
                out[key] = 0.1 * torch.randn(value.shape, generator=generator)
    return out


# ---------------------------------------------------------------------------------------------- reference equivalence

def test_vit_b16_matches_reference(reference):
    ours, ref = twin_models(reference, build_random("ViT-B/16").state_dict())
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 224, 224, generator=generator)
    text = tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(image), ref.encode_image(image), atol=1e-5, rtol=0)
        # ours stops at the longest EOT of the batch; the reference always runs all 77 positions
        torch.testing.assert_close(ours.encode_text(text), ref.encode_text(text), atol=1e-5, rtol=0)
        for got, expected in zip(ours(image, text), ref(image, text)):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_vit_b16_shapes_and_attributes():
    model = build_random("ViT-B/16")
    # 149,620,737 = 86,192,640 (vision) + 63,428,097 (text, incl. logit_scale): OpenAI's ViT-B/16 count
    assert sum(p.numel() for p in model.parameters()) == 149_620_737
    assert (model.visual.width, model.visual.layers, model.visual.input_resolution) == (768, 12, 224)
    assert (model.transformer.width, model.transformer.layers, model.embed_dim) == (512, 12, 512)
    assert model.token_embedding.weight.shape == (49408, 512)
    assert torch.allclose(model.logit_scale.exp(), torch.tensor(1 / 0.07))


def test_rn50_image_and_text_match_reference(reference):
    model = build_random("RN50")
    assert sum(p.numel() for p in model.parameters()) == 102_007_137  # OpenAI's RN50 count
    state_dict = randomize_batchnorms(model.state_dict(), torch.Generator().manual_seed(2))
    ours, ref = twin_models(reference, state_dict)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    text = tokenize(TEXTS[:2])
    with torch.no_grad():
        expected = ref.encode_image(image)
        assert expected.abs().max() > 1e-2  # the comparison is not between two near-zero vectors
        torch.testing.assert_close(ours.encode_image(image), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(text), ref.encode_text(text), atol=1e-5, rtol=0)


def test_config_read_from_state_dict_matches_reference_build(reference):
    for config in (build_random("tiny").config, TINY_RESNET):
        state_dict = CLIP(config).state_dict()
        assert config_from_state_dict(state_dict) == config
        reference.build_model(state_dict)  # the reference derives the same shapes: its strict load succeeds


def test_build_model_is_strict_and_does_not_alias_input():
    state_dict = build_random("tiny").state_dict()
    model = build_model(state_dict)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.positional_embedding.data.zero_()
    assert state_dict["positional_embedding"].abs().sum() > 0
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_model({**state_dict, "extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key"):
        build_model({k: v for k, v in state_dict.items() if k != "visual.ln_pre.bias"})
    with pytest.raises(ValueError, match="not a CLIP state dict"):
        build_model({"weight": torch.zeros(1)})


# -------------------------------------------------------------------------------------------------------- precision

def test_convert_weights_matches_reference_dtypes(reference):
    """Per parameter, our fp16 conversion gives the same dtype as the reference's build_model (which converts)."""
    for config in (build_random("tiny").config, TINY_RESNET):
        state_dict = CLIP(config).state_dict()
        ref_dtypes = {k: v.dtype for k, v in reference.build_model(dict(state_dict)).state_dict().items()}
        ours = convert_weights(build_model(state_dict), torch.float16)
        assert {k: v.dtype for k, v in ours.state_dict().items()} == ref_dtypes
        assert ours.dtype == torch.float16


def test_fp16_model_runs_and_stays_close_to_fp32():
    model = build_random("tiny").eval()
    half = convert_weights(build_model(model.state_dict()), torch.float16).eval()
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    text = tokenize(TEXTS)
    prompts = [torch.randn(3, 128) for _ in range(2)]  # float32 prompts are cast to the model's dtype
    with torch.no_grad():
        for encode, inputs, p in ((model.encode_image, image, prompts), (model.encode_text, text, None)):
            got = getattr(half, encode.__name__)(inputs, p)
            assert got.dtype == torch.float16
            expected = encode(inputs, p)
            assert torch.nn.functional.cosine_similarity(got.float(), expected).min() > 0.999


# ---------------------------------------------------------------------------------- prompt semantics, manual versions

def manual_text(ref, text, prompts):
    """Reference text tower, run block by block with prompts written into positions 1..m (sequence-first)."""
    x = ref.token_embedding(text).clone()  # (n, 77, D)
    n_prompt = next(p.shape[-2] for p in prompts if p is not None)
    if prompts[0] is not None:
        x[:, 1:1 + n_prompt] = prompts[0]
    x = (x + ref.positional_embedding).permute(1, 0, 2)  # (77, n, D)
    for index, block in enumerate(ref.transformer.resblocks):
        if 1 <= index < len(prompts) and prompts[index] is not None:
            x = x.clone()
            x[1:1 + n_prompt] = prompts[index].transpose(0, 1) if prompts[index].dim() == 3 else prompts[index][:, None]
        x = block(x)
    x = ref.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(len(text)), text.argmax(-1)] @ ref.text_projection


def manual_image(ref, image, prompts):
    """Reference ViT, run block by block: prompts appended after the position-embedded tokens, then the last m
    tokens overwritten at deeper blocks."""
    visual = ref.visual
    x = visual.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(image), 1, -1), x], dim=1) + visual.positional_embedding
    n_prompt = prompts[0].shape[-2]
    x = torch.cat([x, prompts[0].expand(len(image), -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)  # (N, B, D)
    for index, block in enumerate(visual.transformer.resblocks):
        if 1 <= index < len(prompts) and prompts[index] is not None:
            x = x.clone()
            x[-n_prompt:] = prompts[index].transpose(0, 1) if prompts[index].dim() == 3 else prompts[index][:, None]
        x = block(x)
    return visual.ln_post(x[0]) @ visual.proj


@pytest.fixture(scope="module")
def tiny_pair(reference):
    """(ours, reference) tiny ViT CLIPs on the same weights, with non-trivial LayerNorm parameters."""
    generator = torch.Generator().manual_seed(5)
    state_dict = build_random("tiny").state_dict()
    for key, value in state_dict.items():
        if "ln_" in key:
            state_dict[key] = value + 0.1 * torch.randn(value.shape, generator=generator)
    return twin_models(reference, state_dict)


def make_prompts(spec, batch, width, n_prompt=3, seed=6):
    """spec entries: 's' shared (m, D), 'p' per-sample (B, m, D), None."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"s": (n_prompt, width), "p": (batch, n_prompt, width)}
    return [None if kind is None else torch.randn(shapes[kind], generator=generator) for kind in spec]


TEXT_CASES = {
    "all_layers_shared": ["s", "s", "s", "s"],
    "depth_2_of_4": ["s", "s"],
    "first_layer_only": ["s"],
    "none_entries_and_per_sample": ["p", None, "s"],
    "deep_only": [None, "s", None, "p"],
}
IMAGE_CASES = {
    "all_layers_shared": ["s", "s", "s", "s"],
    "depth_3_of_4": ["s", "p", "s"],
    "first_layer_only": ["p"],
    "none_entries": ["s", None, None, "s"],
}


@pytest.mark.parametrize("spec", TEXT_CASES.values(), ids=TEXT_CASES.keys())
def test_text_prompts_match_manual_computation(tiny_pair, spec):
    ours, ref = tiny_pair
    text = tokenize(TEXTS)
    prompts = make_prompts(spec, len(text), ours.transformer.width)
    with torch.no_grad():
        # manual_text runs all 77 positions, ours only up to the longest EOT: this also pins the truncation
        torch.testing.assert_close(ours.encode_text(text, prompts), manual_text(ref, text, prompts),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_image_prompts_match_manual_computation(tiny_pair, spec):
    ours, ref = tiny_pair
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    prompts = make_prompts(spec, len(image), ours.visual.width)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(image, prompts), manual_image(ref, image, prompts),
                                   atol=1e-5, rtol=0)


def test_first_layer_text_prompts_replace_the_token_ids_at_positions_1_to_m(tiny_pair):
    ours, _ = tiny_pair
    text = tokenize(["x x x cat.", "a b c cat."])  # differ only at positions 1..3
    prompts = make_prompts(["s", "s"], 2, ours.transformer.width)
    with torch.no_grad():
        features = ours.encode_text(text, prompts)
        plain = ours.encode_text(text)
    torch.testing.assert_close(features[0], features[1], atol=1e-6, rtol=0)
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)


def test_shared_prompt_equals_the_same_prompt_per_sample(tiny_pair):
    ours, _ = tiny_pair
    image = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    shared = make_prompts(["s", "s"], 3, ours.visual.width)
    per_sample = [p.expand(3, -1, -1).clone() for p in shared]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(image, shared), ours.encode_image(image, per_sample))


def test_text_encoding_is_independent_of_batch_padding_length(tiny_pair):
    """Each text alone (its own, shorter truncation) encodes as it does inside a batch with a longer text."""
    ours, _ = tiny_pair
    text = tokenize(TEXTS)
    with torch.no_grad():
        batched = ours.encode_text(text)
        alone = torch.cat([ours.encode_text(text[i:i + 1]) for i in range(len(text))])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_prompts_receive_gradients(tiny_pair):
    ours, _ = tiny_pair
    text_prompts = [p.requires_grad_() for p in make_prompts(["s", "s", "s"], 3, ours.transformer.width)]
    image_prompts = [p.requires_grad_() for p in make_prompts(["s", "p", "s"], 2, ours.visual.width)]
    loss = ours.encode_text(tokenize(TEXTS), text_prompts).sum() + ours.encode_image(torch.randn(2, 3, 32, 32),
                                                                                      image_prompts).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in text_prompts + image_prompts)


def test_bad_prompts_raise_clear_errors(tiny_pair):
    ours, _ = tiny_pair
    text, image = tokenize(TEXTS), torch.randn(2, 3, 32, 32)
    d_t, d_v = ours.transformer.width, ours.visual.width
    with pytest.raises(ValueError, match="5 entries but the text transformer has 4 layers"):
        ours.encode_text(text, [torch.zeros(2, d_t)] * 5)
    with pytest.raises(ValueError, match=r"text prompts\[1\] has shape \(2, 128\)"):
        ours.encode_text(text, [torch.zeros(2, d_t), torch.zeros(2, d_v)])
    with pytest.raises(ValueError, match=r"prompts\[0\] has shape \(2, 2, 64\)"):  # batch 2 != 3 texts
        ours.encode_text(text, [torch.zeros(2, 2, d_t)])
    with pytest.raises(ValueError, match="same length m"):
        ours.encode_image(image, [torch.zeros(2, d_v), torch.zeros(3, d_v)])
    with pytest.raises(ValueError, match="pass prompts\\[0\\] too"):
        ours.encode_image(image, [None, torch.zeros(2, d_v)])
    with pytest.raises(ValueError, match="do not fit in the context length"):
        ours.encode_text(text, [torch.zeros(77, d_t)])
    with pytest.raises(ValueError, match="prompt_position"):
        Transformer(8, 1, 1, prompt_position="first")


def test_resnet_tower_rejects_prompts():
    model = CLIP(TINY_RESNET).eval()
    assert isinstance(model.visual, ModifiedResNet)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model.encode_image(image, [None, None]).shape == (1, 32)
        with pytest.raises(ValueError, match="ResNet image tower has no prompt slots"):
            model.encode_image(image, [torch.zeros(2, 8)])
