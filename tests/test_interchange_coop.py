"""A CoOp-style trainer file, written against openai-clip and the original Dassl, runs here unchanged.

The file below uses the upstream import lines (`from clip import clip`, `from clip.simple_tokenizer import
SimpleTokenizer as _Tokenizer`), loads CLIP as CoOp does (`clip._MODELS[name]` -> `clip._download(url)` ->
`torch.jit.load` or `torch.load` -> `clip.build_model`) and encodes text sequence-first
(`x.permute(1, 0, 2)` around `clip_model.transformer(x)`). It is dropped into a scratch copy of the repository and
trained for one epoch on ToyShapes with random:tiny-shaped weights through train.py. Its text features, with the
context it learnt, must equal what our batch-first prompt path computes (`encode_text(tokens, prompts=[ctx])`).
"""
import hashlib
import importlib.util

import pytest
import torch

import clip
from clip import clip as openai_style
from clip.model import convert_weights
from clip.pretrained import build_random
from dassl.engine import TRAINER_REGISTRY
from datasets.toy_shapes import CLASSNAMES
from scratch_repo import make_scratch_repo, run_train

# The trainer file tries torch.jit.load first, as CoOp does (deprecated in recent torch; not this library's call).
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")

BACKBONE = "tiny-test"  # a name the test adds to clip._MODELS, its URL a file:// URL with the file's SHA256
N_CTX = 4

COOP_STYLE_TRAINER = '''
import torch
import torch.nn as nn
from torch.nn import functional as F

from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_optimizer, build_lr_scheduler

from clip import clip
from clip.simple_tokenizer import SimpleTokenizer as _Tokenizer

_tokenizer = _Tokenizer()
N_CTX = 4


def load_clip_to_cpu(cfg):
    url = clip._MODELS[cfg.MODEL.BACKBONE.NAME]
    model_path = clip._download(url)
    try:
        model = torch.jit.load(model_path, map_location="cpu").eval()
        state_dict = None
    except RuntimeError:
        state_dict = torch.load(model_path, map_location="cpu")
    return clip.build_model(state_dict or model.state_dict())


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts, tokenized_prompts):
        x = prompts + self.positional_embedding.type(self.dtype)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_final(x).type(self.dtype)
        return x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ self.text_projection


class PromptLearner(nn.Module):
    def __init__(self, classnames, clip_model):
        super().__init__()
        dtype = clip_model.dtype
        width = clip_model.ln_final.weight.shape[0]
        ctx_vectors = torch.empty(N_CTX, width, dtype=dtype)
        nn.init.normal_(ctx_vectors, std=0.02)
        self.ctx = nn.Parameter(ctx_vectors)
        names = [name.replace("_", " ") for name in classnames]
        self.name_lens = [len(_tokenizer.encode(name)) for name in names]
        prompts = [" ".join(["X"] * N_CTX) + " " + name + "." for name in names]
        tokenized_prompts = torch.cat([clip.tokenize(p) for p in prompts])
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized_prompts).type(dtype)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + N_CTX:, :])
        self.n_cls = len(classnames)
        self.tokenized_prompts = tokenized_prompts

    def forward(self):
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class CustomCLIP(nn.Module):
    def __init__(self, classnames, clip_model):
        super().__init__()
        self.prompt_learner = PromptLearner(classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image):
        image_features = self.image_encoder(image.type(self.dtype))
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()


@TRAINER_REGISTRY.register()
class CoOpStyle(TrainerX):
    def build_model(self):
        classnames = self.dm.dataset.classnames
        clip_model = load_clip_to_cpu(self.cfg)
        clip_model.float()  # PREC fp32
        self.model = CustomCLIP(classnames, clip_model)
        for name, param in self.model.named_parameters():
            if "prompt_learner" not in name:
                param.requires_grad_(False)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)
'''


def write_weights(folder):
    """random:tiny weights stored as OpenAI stores its checkpoints (matmul weights fp16), at <folder>/<sha256>/.

    Returns (file:// URL that carries the SHA256 as openai-clip's URLs do, path)."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "staging.pt"
    torch.save(convert_weights(build_random("tiny")).state_dict(), staging)
    sha256 = hashlib.sha256(staging.read_bytes()).hexdigest()
    path = folder / sha256 / "tiny-test.pt"
    path.parent.mkdir(parents=True)
    staging.rename(path)
    return path.as_uri(), path


def test_coop_style_trainer_trains_and_its_text_features_equal_ours(tmp_path, monkeypatch):
    repo = make_scratch_repo(tmp_path / "repo")
    (repo / "trainers" / "coop_style.py").write_text(COOP_STYLE_TRAINER)
    url, weights = write_weights(tmp_path / "weights")
    out = tmp_path / "out"
    proc = run_train(
        repo,
        ["--root", str(tmp_path / "data"), "--seed", "1", "--trainer", "CoOpStyle", "--output-dir", str(out),
         "--dataset-config-file", "configs/datasets/toy_shapes.yaml", "--config-file",
         "configs/trainers/HiCroPL/demo_tiny.yaml", "MODEL.BACKBONE.NAME", BACKBONE, "OPTIM.MAX_EPOCH", "1",
         "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002", "USE_CUDA", "False", "TEST.FINAL_MODEL", "last_step"],
        cache=tmp_path / "cache",
        preamble=f"from clip import clip\nclip._MODELS[{BACKBONE!r}] = {url!r}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: skipped" not in proc.stderr
    log = (out / "log.txt").read_text()
    assert "Deploy the last-epoch model" in log and "* accuracy:" in log
    cached = tmp_path / "cache" / "clip" / "tiny-test.pt"  # clip._download put the verified file into the cache
    assert cached.read_bytes() == weights.read_bytes()

    # The trained context, then the file's own text encoder (sequence-first) against our batch-first prompt path.
    ctx = torch.load(out / "prompt_learner" / "model.pth.tar-1", map_location="cpu", weights_only=False)[
        "state_dict"]["ctx"]
    spec = importlib.util.spec_from_file_location("coop_style_under_test", repo / "trainers" / "coop_style.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(openai_style._MODELS, BACKBONE, url)
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "cache" / "clip"))
    monkeypatch.setenv("HICROPL_OFFLINE", "1")
    try:
        spec.loader.exec_module(module)
        classnames = list(CLASSNAMES)
        their_clip = module.load_clip_to_cpu(type("Cfg", (), {"MODEL": type("M", (), {"BACKBONE": type(
            "B", (), {"NAME": BACKBONE})})})).float()
        learner = module.PromptLearner(classnames, their_clip)
        learner.ctx.data.copy_(ctx)
        with torch.no_grad():
            theirs = module.TextEncoder(their_clip)(learner(), learner.tokenized_prompts)
    finally:
        TRAINER_REGISTRY._obj_map.pop("CoOpStyle", None)

    ours_model, _ = clip.load(str(weights))
    texts = [" ".join(["X"] * N_CTX) + f" {name}." for name in classnames]
    with torch.no_grad():
        ours = ours_model.encode_text(clip.tokenize(texts), prompts=[ctx])
    assert not torch.equal(ctx, torch.zeros_like(ctx))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # and the features are not trivially equal for every class (the comparison has power)
    assert (ours[0] - ours[1]).abs().max() > 1e-3
