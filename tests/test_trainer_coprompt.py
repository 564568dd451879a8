"""CoPrompt (trainers/coprompt.py): trainable counts (COPROMPT.md §3), description features D (S, K, d) (§4), the
loss by hand against one description sentence (the same index for every class) and the second view (§5.3)."""
import random

import pytest
import torch
import torch.nn.functional as F

import clip
from test_trainer_comparison_methods import n_trainable, tiny, vitb16  # noqa: F401 (fixtures)
from trainers import coprompt
from trainers.maple import MaPLePromptLearner

CLASSES = ["Forest", "golden retriever", "x"]
SENTENCES = [[f"a {c} outdoors.", f"a small {c}."] for c in CLASSES]


def build(clip_model, n_ctx=2, depth=2, descriptions=None, weight=2.0):
    torch.manual_seed(0)
    learner = MaPLePromptLearner(clip_model, CLASSES, n_ctx, depth, "a photo of a")
    device = clip_model.token_embedding.weight.device
    learned = coprompt.CoPromptLearned(learner, clip_model.embed_dim, device)
    if descriptions is None:
        descriptions = coprompt.description_features(clip_model, SENTENCES)
    return coprompt.CustomCLIP(clip_model, learned, "fp32", descriptions, weight)


@pytest.mark.parametrize("n_ctx, depth, count", [(2, 9, 3_817_216), (4, 12, 5_014_528)])
def test_vit_b16_trainable_count(vitb16, n_ctx, depth, count):
    model = build(vitb16, n_ctx, depth, descriptions=torch.zeros(2, len(CLASSES), vitb16.embed_dim))
    assert n_trainable(model) == count
    assert {"adapter_image.fc.0.weight", "adapter_image.fc.2.weight", "adapter_text.fc.0.weight",
            "adapter_text.fc.2.weight", "prompt_learner.ctx"} <= set(model.state_dict())


def test_description_features_are_sentence_major(tiny):
    d = coprompt.description_features(tiny, SENTENCES)
    assert d.shape == (2, 3, tiny.embed_dim)
    with torch.no_grad():
        expected = F.normalize(tiny.encode_text(clip.tokenize([SENTENCES[2][1]])), dim=-1)[0]
    torch.testing.assert_close(d[1, 2], expected)


def adapter(x, module):
    return F.relu(F.relu(x @ module.fc[0].weight.t()) @ module.fc[2].weight.t())


def test_loss_by_hand_against_one_sentence_and_the_second_view(tiny, monkeypatch):
    model = build(tiny).train()
    learned = model.prompt_learner
    monkeypatch.setattr(random, "randrange", lambda n: 1)  # sentence index 1 for every class
    size = tiny.visual.input_resolution
    x1, x2 = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    label = torch.tensor([2, 0])
    loss, terms = model([x1, x2], label, return_terms=True)
    with torch.no_grad():
        text, vision = learned.prompt_learner()
        t = tiny.encode_text(learned.prompt_learner.tokenized_prompts, text)
        t = F.normalize(0.2 * adapter(t, learned.adapter_text) + 0.8 * t, dim=-1)
        v = tiny.encode_image(x1, vision)
        v = F.normalize(0.1 * adapter(v, learned.adapter_image) + 0.9 * v, dim=-1)
        teacher = F.normalize(tiny.encode_image(x2), dim=-1)
        target = F.normalize(tiny.encode_text(clip.tokenize([group[1] for group in SENTENCES])), dim=-1)
        logits = tiny.logit_scale.exp() * v @ t.t()
        ce = F.cross_entropy(logits, label)
        text_term = 1 - (t * target).sum(-1).mean()
        image_term = 1 - (v * teacher).sum(-1).mean()
    torch.testing.assert_close(terms["text_consistency"].detach(), text_term, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["image_consistency"].detach(), image_term, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss.detach(), ce + 2.0 * (text_term + image_term), atol=1e-5, rtol=1e-5)
    model.eval()
    torch.testing.assert_close(model(x1), logits, atol=1e-5, rtol=1e-5)


def test_released_checkpoint_with_its_teacher_loads(tiny):
    model = build(tiny)
    released = {key: torch.randn_like(value).half() for key, value in model.state_dict().items()}
    extra = {"model_distill.visual.conv1.weight": torch.zeros(1), "image_encoder.conv1.weight": torch.zeros(1),
             "text_encoder.positional_embedding": torch.zeros(1), "logit_scale": torch.tensor(4.6),
             "prompt_learner.token_prefix": torch.zeros(1), "prompt_learner.token_suffix": torch.zeros(1)}
    model.load_state_dict({**extra, **released})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, released[key].float())
