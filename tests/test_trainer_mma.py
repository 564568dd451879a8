"""MMA (trainers/mma.py) and CLIP's per-block side-branch extension point (``Transformer.side_branches``):
counts and released keys (MMA.md §3, §7), the branch output at one block by hand (§4.1), the released gradient
scaling (§4.2), the text tower's shared-prefix path staying exact with branches, released checkpoints loading."""
import pytest
import torch
import torch.nn.functional as F

import clip
from test_trainer_comparison_methods import n_trainable, vitb16  # noqa: F401 (vitb16: fixture)
from trainers import mma

CLASSES = ["Forest", "golden retriever", "x"]


def build(clip_model, start=2, end=4, dim=8, scale=0.1):
    torch.manual_seed(0)
    learner = mma.AdapterLearner(clip_model, CLASSES, "a photo of a", start, end, dim, scale)
    return mma.CustomCLIP(clip_model, learner, "fp32")


@pytest.fixture
def fresh_tiny():
    model, _ = clip.load("random:tiny")
    return model


@pytest.mark.parametrize("start, count", [(5, 674_560), (9, 337_280)])
def test_vit_b16_trainable_count_and_released_keys(vitb16, start, count):
    model = build(vitb16, start, 12, 32, 0.001)
    assert n_trainable(model) == count
    keys = set()
    for i in range(start, 13):
        for tower in ("text", "visual"):
            keys |= {f"{tower}_adapter.{i}.down.0.{p}" for p in ("weight", "bias")}
            keys |= {f"{tower}_adapter.{i}.up.{p}" for p in ("weight", "bias")}
        keys |= {f"shared_adapter.{i}.0.{p}" for p in ("weight", "bias")}
    assert set(model.state_dict()) == keys


def test_branch_output_at_one_block_by_hand(fresh_tiny):
    model = build(fresh_tiny, start=2, end=4, scale=0.1)
    learner = model.prompt_learner
    blocks = fresh_tiny.visual.transformer.resblocks
    seen = {}
    blocks[2].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))  # block 3 (1-based)
    blocks[3].register_forward_pre_hook(lambda module, args: seen.setdefault("out", args[0]))
    image = torch.randn(2, 3, fresh_tiny.visual.input_resolution, fresh_tiny.visual.input_resolution)
    with torch.no_grad():
        model.eval()(image)
        x = seen["x"]
        sd = learner.state_dict()
        h = blocks[2].ln_1(x)
        a = F.relu(F.linear(h, sd["visual_adapter.3.down.0.weight"], sd["visual_adapter.3.down.0.bias"]))
        s = F.relu(F.linear(a, sd["shared_adapter.3.0.weight"], sd["shared_adapter.3.0.bias"]))
        u = F.linear(s, sd["visual_adapter.3.up.weight"], sd["visual_adapter.3.up.bias"])
        expected = blocks[2](x) + 0.1 * u
    torch.testing.assert_close(seen["out"], expected)
    assert learner.shared_adapter[3] is not None and learner.text_adapter[1] is None  # shared by both towers


def test_adapter_gradients_are_scaled_by_one_over_alpha(fresh_tiny):
    model = build(fresh_tiny, scale=0.1).train()
    learner = model.prompt_learner
    image = torch.randn(2, 3, fresh_tiny.visual.input_resolution, fresh_tiny.visual.input_resolution)
    label = torch.tensor([0, 2])
    model(image, label).backward()
    scaled = {name: p.grad.clone() for name, p in learner.named_parameters()}
    learner.zero_grad()

    def plain(adapters, i, x, block):  # the same branch without the gradient scaling
        adapter = adapters[i]
        return 0.1 * adapter.up(learner.shared_adapter[i](adapter.down(block.ln_1(x))))

    for transformer, adapters in ((fresh_tiny.transformer, learner.text_adapter),
                                  (fresh_tiny.visual.transformer, learner.visual_adapter)):
        transformer.side_branches = {i - 1: (lambda x, b, i=i, a=adapters: plain(a, i, x, b)) for i in (2, 3, 4)}
    model(image, label).backward()
    for name, p in learner.named_parameters():
        torch.testing.assert_close(scaled[name], p.grad / 0.1, atol=1e-6, rtol=1e-4)


def test_shared_prefix_text_path_stays_exact_with_branches(fresh_tiny):
    build(fresh_tiny)
    tokens = clip.tokenize([f"a photo of a {c}." for c in CLASSES])
    with torch.no_grad():
        fresh_tiny.share_text_prefix = True
        shared = fresh_tiny.encode_text(tokens)
        fresh_tiny.share_text_prefix = False
        full = fresh_tiny.encode_text(tokens)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)


def test_released_checkpoint_loads(fresh_tiny):
    model = build(fresh_tiny)
    released = {key: torch.randn_like(value) for key, value in model.state_dict().items()}
    model.load_state_dict({"token_embedding": torch.zeros(3, 77, 64), "tokenized_prompts": torch.zeros(3, 77),
                           **released})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, released[key])
