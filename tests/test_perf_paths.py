"""The speed/memory switches change cost, never results (random:tiny CLIP, CPU, functional only: no timings).

- ``CLIP.truncate_text``: computing only up to the longest EOT gives the features of all 77 positions (causal mask);
- ``CLIP.share_text_prefix``: the token prefix common to all texts, computed once, gives the per-text result;
- ``CustomCLIP.cache_eval_text``: the text side runs once per evaluation instead of once per batch;
- a separate teacher copy vs. the backbone's own visual tower with prompts off;
- ``Transformer.checkpointing`` (TRAINER.HICROPL.TEXT_CHECKPOINTING): same loss and gradients.
The reference for each is the same model with the switch the other way (the naive path of scripts/benchmark.py).
"""
import pytest
import torch
import torch.nn.functional as F

import clip
from dassl.config import get_cfg_default
from train import extend_cfg
from trainers.hicropl import CustomCLIP

N_CLASSES = 7


def make_cfg(mapper_mode="released", **extra):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    hc = cfg.TRAINER.HICROPL
    hc.N_CTX, hc.PROMPT_DEPTH, hc.CROSS_LAYER, hc.CTX_INIT, hc.PREC, hc.LAMBD = 3, 4, 2, "", "fp32", 12.0
    hc.MAPPER_MODE = mapper_mode
    for key, value in extra.items():
        setattr(hc, key, value)
    return cfg


def build(naive=False, mapper_mode="released", **extra):
    """(model, clip model); every build gives the same weights (seeded prompts, seeded random CLIP)."""
    clip_model, _ = clip.load("random:tiny")
    teacher = clip.load("random:tiny")[0] if naive else None
    generator = torch.Generator().manual_seed(0)
    # class names of different token lengths, so that truncation really cuts padding off the shorter ones
    names = [f"class {i}" + " big" * (i % 3) for i in range(N_CLASSES)]
    frozen_text = F.normalize(torch.randn(N_CLASSES, clip_model.embed_dim, generator=generator), dim=-1)
    torch.manual_seed(0)
    model = CustomCLIP(make_cfg(mapper_mode, **extra), names, clip_model, frozen_text, teacher)
    if naive:
        clip_model.truncate_text = False
        clip_model.share_text_prefix = False
        model.cache_eval_text = False
    return model, clip_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-offs, which cost a scheduler slice each on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 5, 3, 32, 32, generator=generator)
    labels = torch.randint(0, N_CLASSES, (5,), generator=generator)
    return images, labels


def test_text_truncation_is_exact():
    clip_model, _ = clip.load("random:tiny")
    tokens = clip.tokenize(["a", "a photo of a big dog with a long name, far longer than the others", "cat."])
    prompts = [torch.randn(2, clip_model.transformer.width) for _ in range(3)]
    with torch.no_grad():
        short = clip_model.encode_text(tokens, prompts)
        clip_model.truncate_text = False
        full = clip_model.encode_text(tokens, prompts)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prompt_dims", [2, 3])
def test_shared_prefix_is_exact_in_values_and_gradients(prompt_dims):
    clip_model, _ = clip.load("random:tiny")
    # common prefix: SOT + "x x x" (the prompt slots) + "class"; the texts differ after that; two are equal
    tokens = clip.tokenize(["x x x class 1.", "x x x class 22 big.", "x x x class 3 and more words.", "x x x class 1."])
    eot = tokens.argmax(dim=-1)
    generator = torch.Generator().manual_seed(3)
    width = clip_model.transformer.width
    prompts = [torch.randn(3, width, generator=generator).requires_grad_() for _ in range(3)]
    used = [p if prompt_dims == 2 else p.expand(len(tokens), -1, -1) for p in prompts]
    # shared prompts: the prefix is SOT, 3 prompt slots and "class"; per-text (3-D) prompts cannot be shared
    assert clip_model.shared_prefix(tokens, eot, 3, used) == (5 if prompt_dims == 2 else 0)
    results = []
    for share in (True, False):
        clip_model.share_text_prefix = share
        features = clip_model.encode_text(tokens, used)
        results.append((features, torch.autograd.grad(features.square().sum(), prompts)))
    (shared, shared_grads), (plain, plain_grads) = results
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared[0], shared[3])  # equal texts, equal features
    for a, b in zip(shared_grads, plain_grads):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_shared_prefix_needs_the_prompt_slots_inside_it():
    clip_model, _ = clip.load("random:tiny")
    tokens = clip.tokenize(["a cat.", "a dog."])  # common prefix: SOT, "a"
    eot = tokens.argmax(dim=-1)
    assert clip_model.share_text_prefix is None  # default: automatic, i.e. on for CPU tensors
    assert clip_model.shared_prefix(tokens, eot, 0, None) == 2
    assert clip_model.shared_prefix(tokens, eot, 2, None) == 0  # prompts at positions 1..2 reach beyond it
    assert clip_model.shared_prefix(tokens[:1], eot[:1], 0, None) == 0  # a single text: nothing to share
    with torch.no_grad():
        shared = clip_model.encode_text(tokens)
        clip_model.share_text_prefix = False
        torch.testing.assert_close(shared, clip_model.encode_text(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mapper_mode", ["released", "differentiable"])
def test_naive_and_optimised_paths_give_the_same_logits(batches, mapper_mode):
    images, _ = batches
    optimised, _ = build(mapper_mode=mapper_mode)
    naive, _ = build(naive=True, mapper_mode=mapper_mode)
    optimised.eval()
    naive.eval()
    with torch.no_grad():
        # first batch: both paths run the prompt learner once, on equal parameters
        torch.testing.assert_close(optimised(images[0]), naive(images[0]), rtol=1e-5, atol=1e-5)
        if mapper_mode == "differentiable":  # nothing mutates: every later batch agrees too
            for batch in images[1:]:
                torch.testing.assert_close(optimised(batch), naive(batch), rtol=1e-5, atol=1e-5)


def test_eval_cache_runs_the_text_side_once_per_evaluation(batches):
    images, _ = batches
    calls = {"optimised": 0, "naive": 0}
    for path in calls:
        model, clip_model = build(naive=path == "naive")
        real = clip_model.encode_text

        def counting(*args, _path=path, _real=real, **kwargs):
            calls[_path] += 1
            return _real(*args, **kwargs)

        clip_model.encode_text = counting
        model.eval()
        with torch.no_grad():
            for batch in images:
                model(batch)
            model.eval()  # a new evaluation recomputes the text side once more
            model(images[0])
    assert calls == {"optimised": 2, "naive": len(images) + 1}


def test_training_loss_and_gradients_do_not_depend_on_the_switches(batches):
    images, labels = batches
    results = []
    for kwargs in ({}, {"naive": True}, {"TEXT_CHECKPOINTING": True}):
        model, _ = build(**kwargs)
        model.train()
        loss = model(images[0], labels)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    reference_loss, reference_grads = results[0]
    assert reference_grads, "no parameter received a gradient"
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
        assert grads.keys() == reference_grads.keys()
        for name in grads:  # float32 sums over different sequence lengths: equal up to ~1e-6 of the scale
            scale = reference_grads[name].abs().max()
            assert (grads[name] - reference_grads[name]).abs().max() <= 1e-5 * scale, name


def test_text_checkpointing_config_reaches_the_text_tower_only():
    model, clip_model = build(TEXT_CHECKPOINTING=True)
    assert clip_model.transformer.checkpointing and not clip_model.visual.transformer.checkpointing
    _, plain = build()
    assert not plain.transformer.checkpointing
    assert make_cfg().TRAINER.HICROPL.TEXT_CHECKPOINTING is False  # documented default: off


def test_teacher_runs_without_autograd_and_the_frozen_towers_get_no_gradient(batches):
    images, labels = batches
    model, clip_model = build()
    model.train()
    assert not model.teacher_features(images[0]).requires_grad
    model(images[0], labels).backward()
    assert all(p.grad is None for p in clip_model.parameters())
