"""PromptSRC (trainers/promptsrc.py): trainable counts (PROMPTSRC.md §2), the loss by hand (§4), the GPA weights
(§5) and the averaged prompts after N epochs by hand, and GPA surviving a kill + resume bit-identically."""
import math

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from test_engine_epoch_hook import train_in_process
from test_trainer_comparison_methods import cache_dir, n_trainable, tiny, vitb16  # noqa: F401 (fixtures)
from trainers import promptsrc
from trainers.ivlp import IVLPPromptLearner

CLASSES = ["Forest", "golden retriever", "x"]


def build(clip_model, depth=9, m=4):
    torch.manual_seed(0)
    learner = IVLPPromptLearner(clip_model, CLASSES, m, m, depth, depth, "a photo of a")
    frozen = F.normalize(torch.randn(len(CLASSES), clip_model.embed_dim), dim=-1)
    return promptsrc.CustomCLIP(clip_model, learner, "fp32", frozen, 10, 25)


@pytest.mark.parametrize("depth, count", [(9, 46_080), (3, 15_360)])
def test_vit_b16_trainable_count(vitb16, depth, count):
    assert n_trainable(build(vitb16, depth)) == count


def test_gpa_weights_of_the_published_configs():
    weights = promptsrc.gpa_weights(20, 15, 1)  # base-to-novel
    assert sum(weights) == pytest.approx(1)
    for epoch, value in {12: 0.0044, 13: 0.0540, 14: 0.2420, 15: 0.3989, 16: 0.2420, 17: 0.0540, 18: 0.0044}.items():
        assert weights[epoch - 1] == pytest.approx(value, abs=1e-4)
    xd = promptsrc.gpa_weights(20, 6, 10)
    assert (xd[0], xd[5], xd[19]) == pytest.approx((0.0554, 0.0628, 0.0236), abs=1e-4)


def test_loss_by_hand(tiny):
    model = build(tiny, depth=2, m=2).train()
    image = torch.randn(4, 3, tiny.visual.input_resolution, tiny.visual.input_resolution)
    label = torch.tensor([0, 1, 2, 1])
    loss, terms = model(image, label, return_terms=True)
    with torch.no_grad():
        f_p, g_p = model.features(image)
        f = F.normalize(tiny.encode_image(image), dim=-1)
        g = model.frozen_text
        scale = tiny.logit_scale.exp()
        z_p, z = scale * f_p @ g_p.t(), scale * f @ g.t()
        q, p = z.softmax(dim=1), z_p.softmax(dim=1)
        kl = (q * (q.log() - p.log())).sum() / z.numel()
        ce = -z_p.log_softmax(dim=1)[torch.arange(4), label].mean()
        expected = ce + 10 * (f_p - f).abs().mean() + 25 * (g_p - g).abs().mean() + kl
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["kl"].detach(), kl, atol=1e-6, rtol=1e-5)


def test_released_checkpoint_with_its_teacher_copy_loads(tiny):
    model = build(tiny, depth=2, m=2)
    released = {key: torch.randn_like(value).half() for key, value in model.state_dict().items()}
    extra = {"prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(1), "logit_scale": torch.tensor(4.6),
             "image_encoder.ln_post.weight": torch.zeros(1), "prompt_learner.token_prefix": torch.zeros(1)}
    model.load_state_dict({**extra, **released})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, released[key].float())


def test_template_ensemble_averages_unnormalised_features(tiny):
    import clip
    g = promptsrc.template_ensemble_features(tiny, ["cat"], ["a {}.", "the {}!"])
    with torch.no_grad():
        raw = tiny.encode_text(clip.tokenize(["a cat.", "the cat!"]))
    torch.testing.assert_close(g, F.normalize(raw.mean(dim=0, keepdim=True), dim=-1))


# ------------------------------------------------------------------------------------------------------ GPA runs

@TRAINER_REGISTRY.register(force=True)
class PromptSRCSnapshots(promptsrc.PromptSRC):
    """PromptSRC that keeps each epoch's prompts (before GPA) and can be killed before an epoch."""

    crash_at_epoch = None

    def run_epoch(self):
        if self.epoch == self.crash_at_epoch:
            raise KeyboardInterrupt("simulated kill")
        super().run_epoch()

    def end_of_epoch(self):
        self.snapshots = getattr(self, "snapshots", []) + [
            {k: v.clone() for k, v in self.model.state_dict().items()}]
        super().end_of_epoch()


def run(data_root, out, crash_at=None):
    PromptSRCSnapshots.crash_at_epoch = crash_at
    return train_in_process(data_root, out, "PromptSRCSnapshots", "configs/trainers/PromptSRC/demo_tiny.yaml",
                            "TRAINER.PROMPTSRC.GPA_MEAN", 2, "TRAINER.PROMPTSRC.GPA_STD", 1)


def test_gpa_model_after_n_epochs_by_hand_and_kill_resume_bit_identical(tmp_path_factory, tmp_path):
    data_root = str(tmp_path_factory.getbasetemp() / "data")
    reference = run(data_root, tmp_path / "full")
    density = [math.exp(-0.5 * (e - 2) ** 2) for e in (1, 2, 3)]  # N(2, 1) at epochs 1, 2, 3
    weights = [d / sum(density) for d in density]
    final = reference.model.state_dict()
    assert len(reference.snapshots) == 3
    for key, value in final.items():
        expected = sum(w * snap[key] for w, snap in zip(weights, reference.snapshots))
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(value, reference.snapshots[-1][key])  # not simply the last epoch
    with pytest.raises(KeyboardInterrupt):
        run(data_root, tmp_path / "killed", crash_at=2)
    resumed = run(data_root, tmp_path / "killed")
    for key, value in final.items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
