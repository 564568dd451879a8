"""Optimizers and lr schedules: the verified tables of DASSL_API §7.2, SPEC §6.3 for the HiCroPL configs, and a
resume that continues the schedule (where the original Dassl freezes the lr)."""
import math
import os.path as osp
import pickle

import pytest
import torch
import torch.nn as nn

from dassl.config import get_cfg_default, merge_from_file_checked
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import UserError, restore_from_checkpoint, save_checkpoint

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def optim_cfg(**overrides):
    cfg = get_cfg_default()
    cfg.OPTIM.LR = 0.0025
    for key, value in overrides.items():
        setattr(cfg.OPTIM, key, value)
    return cfg.OPTIM


def lr_sequence(optim, n_epochs, model=None):
    """The lr of each epoch when the scheduler is stepped once at the end of every epoch."""
    model = model or nn.Linear(3, 2)
    optimizer = build_optimizer(model, optim)
    scheduler = build_lr_scheduler(optimizer, optim)
    lrs = []
    for _ in range(n_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# DASSL_API.md §7.2, LR per 0-based epoch with base 0.0025 [verified against the original Dassl].
VERIFIED = [
    (dict(LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=1, WARMUP_TYPE="constant"),
     [1e-5, 0.0025, 0.00226127, 0.00163627, 0.00086373]),
    (dict(LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=2, WARMUP_TYPE="constant"),
     [1e-5, 1e-5, 0.0025, 0.00226127, 0.00163627]),
    (dict(LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=3, WARMUP_TYPE="linear"),
     [1e-5, 0.00083333, 0.00166667, 0.0025, 0.00226127, 0.00163627]),
    (dict(LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=-1),
     [0.0025, 0.00226127, 0.00163627, 0.00086373, 0.00023873]),
    (dict(LR_SCHEDULER="single_step", STEPSIZE=(-1,), MAX_EPOCH=5),
     [0.0025] * 5 + [0.00025]),
    (dict(LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=1, WARMUP_TYPE="constant", WARMUP_RECOUNT=False),
     [1e-5, 0.0025, 0.00180902, 0.00095492, 0.00026393]),
]


@pytest.mark.parametrize("overrides, expected", VERIFIED)
def test_lr_schedule_matches_verified_dassl_tables(overrides, expected):
    assert lr_sequence(optim_cfg(**overrides), len(expected)) == pytest.approx(expected, abs=5e-9)


def test_multi_step_decays_at_each_milestone():
    lrs = lr_sequence(optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=(2, 4), GAMMA=0.5, MAX_EPOCH=6), 6)
    assert lrs == pytest.approx([0.0025, 0.0025, 0.00125, 0.00125, 0.000625, 0.000625])


def hicropl_lr(e, max_epoch):
    """SPEC §6.3: lr(0) = 1e-5; lr(e) = 0.0025 * (1 + cos(pi * (e - 1) / T)) / 2 for e >= 1."""
    return 1e-5 if e == 0 else 0.0025 * (1 + math.cos(math.pi * (e - 1) / max_epoch)) / 2


@pytest.mark.parametrize("config, max_epoch", [
    ("vit_b16_c2_ep50_batch32_16ctx.yaml", 50),
    ("vit_b16_c2_ep40_batch128_16ctx.yaml", 40),
    ("vit_b16_c2_ep5_batch32_2ctx_cross_datasets.yaml", 5),
])
def test_hicropl_configs_reproduce_the_released_schedule(config, max_epoch):
    path = osp.join(REPO, "configs", "trainers", "HiCroPL", config)
    if not osp.exists(path):
        pytest.skip(f"{config} not written yet")
    from trainers.config import add_trainer_cfg

    cfg = get_cfg_default()
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    add_trainer_cfg(cfg)
    merge_from_file_checked(cfg, path)
    assert cfg.OPTIM.MAX_EPOCH == max_epoch
    lrs = lr_sequence(cfg.OPTIM, max_epoch)
    assert lrs == pytest.approx([hicropl_lr(e, max_epoch) for e in range(max_epoch)], rel=1e-12)
    if max_epoch == 50:
        assert lrs[:2] == pytest.approx([1e-5, 0.0025]) and lrs[-1] == pytest.approx(9.86e-6, abs=5e-9)


def test_resume_continues_the_schedule(tmp_path):
    """Stop after 3 of 8 epochs, save, restore into fresh objects: the next lrs follow the closed form."""
    optim = optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=8, WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    expected = [hicropl_lr(e, 8) for e in range(8)]

    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, optim)
    scheduler = build_lr_scheduler(optimizer, optim)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 3, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "val_result": None}, str(tmp_path))
    checkpoint = torch.load(tmp_path / "model.pth.tar-3", weights_only=True)  # plain values only
    assert checkpoint["scheduler"]["last_epoch"] == 3

    model2 = nn.Linear(3, 2)
    optimizer2 = build_optimizer(model2, optim)
    scheduler2 = build_lr_scheduler(optimizer2, optim)
    assert restore_from_checkpoint(str(tmp_path), model2, optimizer2, scheduler2)["epoch"] == 3
    lrs = []
    for _ in range(5):
        lrs.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        scheduler2.step()
    assert lrs == pytest.approx(expected[3:], rel=1e-12)


def test_checkpoint_of_the_original_dassl_loads_through_the_trusted_fallback(tmp_path, capsys):
    """Its scheduler state embeds pickled objects: weights_only=True refuses it, the engine falls back and sets
    the schedule from the checkpoint's epoch count."""
    optim = optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=5, WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, optim)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1), 5)
    foreign_state = {"successor": successor, "warmup_epoch": 1, "last_epoch": 1, "base_lrs": [0.0025]}
    torch.save({"state_dict": model.state_dict(), "epoch": 2, "optimizer": optimizer.state_dict(),
                "scheduler": foreign_state, "val_result": 50.0}, tmp_path / "model.pth.tar-2")
    (tmp_path / "checkpoint").write_text("model.pth.tar-2\n")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "model.pth.tar-2", weights_only=True)

    scheduler = build_lr_scheduler(optimizer, optim)
    restore_from_checkpoint(str(tmp_path), nn.Linear(3, 2), optimizer, scheduler)
    assert "weights_only=False" in capsys.readouterr().out
    assert scheduler.last_epoch == 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.00226127, abs=5e-9)  # epoch 2 of the verified table


def test_optimizers_take_their_config_values():
    model = nn.Linear(3, 2)
    adam = build_optimizer(model, optim_cfg(NAME="adam", EPS=1e-3))
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["eps"] == 1e-3 and adam.defaults["weight_decay"] == 5e-4
    assert adam.defaults["betas"] == (0.9, 0.999) and not adam.defaults["amsgrad"]
    sgd = build_optimizer(model, optim_cfg(NAME="sgd", LR=0.002))
    assert isinstance(sgd, torch.optim.SGD) and (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.002, 0.9)
    adamw = build_optimizer(model, optim_cfg(NAME="adamw", EPS=1e-3))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["eps"] == 1e-8  # EPS is for "adam" only
    assert build_optimizer(model, optim_cfg(NAME="amsgrad")).defaults["amsgrad"]
    with pytest.raises(UserError, match="OPTIM.NAME must be one of"):
        build_optimizer(model, optim_cfg(NAME="lamb"))


def test_staged_lr_gives_base_layers_a_smaller_lr():
    model = nn.Sequential()
    model.add_module("backbone", nn.Linear(3, 3))
    model.add_module("head", nn.Linear(3, 2))
    optimizer = build_optimizer(model, optim_cfg(NAME="sgd", STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1))
    base, new = optimizer.param_groups
    assert base["lr"] == pytest.approx(0.00025) and new["lr"] == 0.0025
    assert {id(p) for p in new["params"]} == {id(p) for p in model.head.parameters()}


def test_bad_schedule_names_are_user_errors():
    with pytest.raises(UserError, match="OPTIM.LR_SCHEDULER"):
        lr_sequence(optim_cfg(LR_SCHEDULER="poly"), 1)
    with pytest.raises(UserError, match="OPTIM.WARMUP_TYPE"):
        lr_sequence(optim_cfg(WARMUP_EPOCH=1, WARMUP_TYPE="exp"), 1)
