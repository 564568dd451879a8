"""CoOp, CoCoOp, KgCoOp and TCP (trainers/coop.py, cocoop.py, kgcoop.py, tcp.py) on the shared CLIP.

- trainable parameter counts and checkpoint keys on full-size random:ViT-B/16 = the fact sheets' numbers
  (CoOp 2,048 / 8,192 / K x 8,192, CoCoOp 35,360, KgCoOp 2,048, TCP 331,904);
- one equation each, written here independently: CoOp's middle/front layouts and EOT positions, CoCoOp's Meta-Net
  offset added to every context vector, KgCoOp's loss by hand, TCP's class-aware tokens at their layer only;
- released checkpoints (with their class-dependent buffers and unused modules) load, wrong ones fail in one line;
- a short ToyShapes training of each method lifts base accuracy above chance (random:tiny, CPU).
"""
import json

import pytest
import torch
import torch.nn.functional as F

import clip
from common.errors import UserError
from dassl.engine import build_trainer
from dassl.utils import load_checkpoint, set_random_seed
from train import build_parser, setup_cfg
from trainers import cocoop, coop, kgcoop, tcp
from trainers.coop import CoOpPromptLearner

CLASSES = ["Annual Crop Land", "Forest", "golden retriever", "x", "Industrial Buildings"]
META_KEYS = {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
             "meta_net.linear2.bias"}


def unit_rows(n, width, seed=0):
    return F.normalize(torch.randn(n, width, generator=torch.Generator().manual_seed(seed)), dim=-1)


def build(method, clip_model, classnames=CLASSES, **kw):
    """The method's CustomCLIP in fp32 with published settings unless overridden."""
    torch.manual_seed(0)
    frozen = unit_rows(len(classnames), clip_model.embed_dim)
    if method == "CoOp":
        learner = CoOpPromptLearner(clip_model, classnames, kw.get("n_ctx", 16), kw.get("ctx_init", ""),
                                    kw.get("csc", False), kw.get("position", "end"))
        return coop.CustomCLIP(clip_model, learner, "fp32")
    if method == "CoCoOp":
        learner = cocoop.CoCoOpPromptLearner(clip_model, classnames, 4, kw.get("ctx_init", "a photo of a"))
        return cocoop.CustomCLIP(clip_model, learner, "fp32")
    if method == "KgCoOp":
        learner = CoOpPromptLearner(clip_model, classnames, 4, "a photo of a")
        return kgcoop.CustomCLIP(clip_model, learner, "fp32", frozen, kw.get("weight", 8.0))
    learner = tcp.TCPPromptLearner(clip_model, classnames, 4, "", "{}, a type of pet.", frozen, kw.get("layer", 8))
    return tcp.CustomCLIP(clip_model, learner, "fp32", frozen, 8.0)


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def vitb16():
    model, _ = clip.load("random:ViT-B/16")
    return model


@pytest.fixture(scope="module")
def tiny():
    model, _ = clip.load("random:tiny")
    return model


# ------------------------------------------------------------------------------------- counts and checkpoint keys

@pytest.mark.parametrize("method, kw, count, keys", [
    ("CoOp", {"ctx_init": "a photo of a"}, 2_048, {"ctx"}),  # base-to-novel setting (ctxv1, M = 4)
    ("CoOp", {}, 8_192, {"ctx"}),  # few-shot setting, M = 16 random
    ("CoOp", {"csc": True}, 5 * 8_192, {"ctx"}),  # class-specific context
    ("CoCoOp", {}, 35_360, META_KEYS),
    ("KgCoOp", {}, 2_048, {"ctx"}),
    ("TCP", {}, 331_904, META_KEYS),
])
def test_vit_b16_trainable_count_and_checkpoint_keys(vitb16, method, kw, count, keys):
    model = build(method, vitb16, **kw)
    assert n_trainable(model) == count
    assert set(model.state_dict()) == keys
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {f"prompt_learner.{k}" for k in keys}


# ------------------------------------------------------------------------------------------------------ equations

@pytest.mark.parametrize("position", ["middle", "front"])
def test_coop_class_token_layouts_and_eot(tiny, position):
    model = build("CoOp", tiny, n_ctx=4, position=position)
    learner, ctx = model.prompt_learner, model.prompt_learner.ctx.detach()
    embed = tiny.token_embedding.weight.detach()
    rows = []
    for name in CLASSES:  # [SOT] ... [EOT] from the tokenizer, the context placed by hand
        ids = clip.tokenize([f"{name}."])[0]
        sot, name_ids, tail = ids[:1], ids[1:int(ids.argmax()) - 1], ids[int(ids.argmax()) - 1:]  # tail: . EOT pad
        parts = [embed[sot], embed[name_ids], ctx] if position == "front" else \
            [embed[sot], ctx[:2], embed[name_ids], ctx[2:]]
        row = torch.cat(parts + [embed[tail]])[:int(learner.eot.max()) + 1]  # positions past every EOT: unused
        rows.append(row)
    expected_rows = torch.stack(rows)
    expected_eot = torch.tensor([1 + 4 + len(clip.tokenize([n])[0].nonzero()) - 2 + 1 for n in CLASSES])
    with torch.no_grad():
        torch.testing.assert_close(learner.layout(learner.ctx), expected_rows)
        assert torch.equal(learner.eot, expected_eot)
        torch.testing.assert_close(learner.text_features(tiny), tiny.encode_text_embeddings(expected_rows,
                                                                                           expected_eot))


def spy_encode_text(monkeypatch, clip_model):
    calls = []
    original = clip_model.encode_text

    def spy(text, prompts=None):
        calls.append((text, prompts))
        return original(text, prompts)

    monkeypatch.setattr(clip_model, "encode_text", spy)
    return calls


def test_cocoop_meta_net_offset_is_added_to_every_context_vector(tiny, monkeypatch):
    model = build("CoCoOp", tiny, ctx_init="")
    learner = model.prompt_learner
    image = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calls = spy_encode_text(monkeypatch, tiny)
    with torch.no_grad():
        logits = model(image)
        features = F.normalize(tiny.encode_image(image), dim=-1)
        linear1, linear2 = learner.meta_net.linear1, learner.meta_net.linear2
        offsets = F.relu(features @ linear1.weight.t() + linear1.bias) @ linear2.weight.t() + linear2.bias  # (3, D)
        (text, prompts), = [c for c in calls if c[1] is not None]
        assert text.shape[0] == 3 * len(CLASSES) and len(prompts) == 1
        expected = []
        for b in range(3):
            ctx_b = learner.ctx + offsets[b]  # the same offset on each of the M vectors
            for k in range(len(CLASSES)):
                torch.testing.assert_close(prompts[0][b * len(CLASSES) + k], ctx_b)
            w = F.normalize(tiny.encode_text(learner.tokenized_prompts, [ctx_b]), dim=-1)
            expected.append(tiny.logit_scale.exp() * features[b] @ w.t())
    torch.testing.assert_close(logits, torch.stack(expected), atol=1e-4, rtol=0)


def test_kgcoop_loss_by_hand(tiny):
    model = build("KgCoOp", tiny, weight=8.0).train()
    image = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    label = torch.tensor([0, 1, 2, 4])
    loss, terms = model(image, label, return_terms=True)
    with torch.no_grad():
        w = F.normalize(tiny.encode_text(model.prompt_learner.tokenized_prompts, [model.prompt_learner.ctx]), dim=-1)
        f = F.normalize(tiny.encode_image(image), dim=-1)
        logits = tiny.logit_scale.exp() * f @ w.t()
        cosines = (w * model.frozen_text).sum(-1) / (w.norm(dim=-1) * model.frozen_text.norm(dim=-1))
        expected = F.cross_entropy(logits, label) + 8.0 * (1 - cosines.mean())
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)
    assert terms["knowledge"] > 0
    loss.backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0


def test_tcp_class_aware_tokens_at_their_layer_only(tiny, monkeypatch):
    model = build("TCP", tiny, layer=2)
    learner = model.prompt_learner
    calls = spy_encode_text(monkeypatch, tiny)
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 32, 32))
        (text, prompts), = calls
        linear1, linear2 = learner.meta_net.linear1, learner.meta_net.linear2
        hidden = learner.frozen_text @ linear1.weight.t() + linear1.bias
        tokens = (hidden * torch.sigmoid(1.702 * hidden)) @ linear2.weight.t() + linear2.bias  # QuickGELU
    assert len(prompts) == 3 and prompts[1] is None  # block 0: context; block 1: nothing; block 2: class tokens
    assert prompts[0] is learner.ctx
    torch.testing.assert_close(prompts[2], tokens.view(len(CLASSES), 4, -1))
    assert torch.equal(text, learner.tokenized_prompts)
    assert clip.tokenize(["X X X X x, a type of pet."])[0].tolist() == text[3].tolist()


# ----------------------------------------------------------------------------------------------------- checkpoints

def test_released_checkpoints_load_and_wrong_ones_fail_in_one_line(tiny):
    model = build("KgCoOp", tiny)
    width = tiny.transformer.width
    released = {"ctx": torch.randn(4, width).half(), "token_prefix": torch.zeros(7, 1, width).half(),
                "token_suffix": torch.zeros(7, 72, width).half(), "bias_vectors": torch.zeros(1, width),
                "meta_net.linear1.weight": torch.zeros(width, width), "meta_net.linear1.bias": torch.zeros(width)}
    model.load_state_dict(released)
    torch.testing.assert_close(model.prompt_learner.ctx.detach(), released["ctx"].float())
    coop_model = build("CoOp", tiny, n_ctx=4)
    coop_model.load_state_dict({k: released[k] for k in ("ctx", "token_prefix", "token_suffix")})
    with pytest.raises(UserError, match=r"unexpected keys: bias_vectors.*meta_net.linear1.weight"):
        coop_model.load_state_dict(released)
    with pytest.raises(UserError, match=r"shape mismatch.*ctx \(16, 64\) vs \(4, 64\)"):
        coop_model.load_state_dict({"ctx": torch.zeros(16, width)})


# --------------------------------------------------------------------------------------------------------- training

def make_trainer(data_root, output_dir, method, *opts):
    argv = ["--root", data_root, "--seed", "1", "--trainer", method,
            "--config-file", f"configs/trainers/{method}/demo_tiny.yaml",
            "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--output-dir", str(output_dir)]
    cfg = setup_cfg(build_parser().parse_args(argv + ["USE_CUDA", "False", *map(str, opts)]))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HICROPL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hicropl_cache"))


@pytest.mark.parametrize("method, keys", [("CoOp", {"ctx"}), ("CoCoOp", META_KEYS), ("KgCoOp", {"ctx"}),
                                          ("TCP", META_KEYS)])
def test_short_toy_shapes_training_lifts_base_accuracy_above_chance(tmp_path_factory, tmp_path, method, keys):
    data_root = str(tmp_path_factory.getbasetemp() / "data")
    epochs = 5
    trainer = make_trainer(data_root, tmp_path, method, "DATASET.SUBSAMPLE_CLASSES", "base",
                           "OPTIM.MAX_EPOCH", epochs)
    trainer.train()
    record = json.loads((tmp_path / "results.json").read_text())["evaluations"][-1]
    assert record["split"] == "test" and record["trainer"] == method and record["n"] == 5 * 12
    assert record["accuracy"] > 32.0  # chance: 20% (measured 40-52% with seed 1)
    checkpoint = load_checkpoint(str(tmp_path / "prompt_learner" / f"model.pth.tar-{epochs}"))
    assert set(checkpoint["state_dict"]) == keys


# --------------------------------------------------------------------------------------------------------- configs

PUBLISHED = {  # the fact sheets' published protocol values
    "CoOp/vit_b16_ctxv1": {"OPTIM.NAME": "sgd", "OPTIM.LR": 0.002, "OPTIM.MAX_EPOCH": 200,
                           "DATALOADER.TRAIN_X.BATCH_SIZE": 32, "TRAINER.COOP.CTX_INIT": "a photo of a"},
    "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1": {"OPTIM.MAX_EPOCH": 10, "DATALOADER.TRAIN_X.BATCH_SIZE": 1,
                                            "TRAINER.COCOOP.N_CTX": 4, "TRAINER.COCOOP.CTX_INIT": "a photo of a"},
    "KgCoOp/vit_b16_ep100_ctxv1": {"OPTIM.MAX_EPOCH": 100, "DATALOADER.TRAIN_X.BATCH_SIZE": 128,
                                   "TRAINER.KGCOOP.W": 8.0, "TRAINER.KGCOOP.CTX_INIT": "a photo of a"},
    "TCP/vit_b16_ep100_ctxv1": {"OPTIM.NAME": "adam", "OPTIM.EPS": 1e-3, "OPTIM.MAX_EPOCH": 50,
                                "TRAINER.TCP.LAYER": 8, "TRAINER.TCP.W": 8.0, "TRAINER.TCP.N_CTX": 4},
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_merge_with_their_values(name):
    method = name.split("/")[0]
    cfg = setup_cfg(build_parser().parse_args(["--trainer", method, "--config-file",
                                               f"configs/trainers/{name}.yaml"]))
    for key, value in {**PUBLISHED[name], "TEST.FINAL_MODEL": "last_step", "MODEL.BACKBONE.NAME": "ViT-B/16"}.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, key


@pytest.mark.parametrize("method, opts, message", [
    ("CoOp", ["TRAINER.COOP.PREC", "fp16"], "TRAINER.COOP.PREC fp16 needs a CUDA device"),
    ("CoOp", ["TRAINER.COOP.CLASS_TOKEN_POSITION", "middel"], "CLASS_TOKEN_POSITION is 'middel'; choose one of"),
    ("TCP", ["TRAINER.TCP.LAYER", "4"], r"TRAINER.TCP.LAYER is 4; it must lie in \[1, 3\]"),
    ("KgCoOp", ["TRAINER.KGCOOP.W", "-1.0"], "TRAINER.KGCOOP.W is -1.0; it must be >= 0"),
])
def test_bad_settings_fail_in_one_line(tmp_path_factory, tmp_path, method, opts, message):
    with pytest.raises(UserError, match=message):
        make_trainer(str(tmp_path_factory.getbasetemp() / "data"), tmp_path, method, *opts)
