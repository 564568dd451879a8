"""The HiCroPL protocol configs carry exactly the values of SPEC §6.1 (merged the way train.py merges them)."""
import pytest

from train import build_parser, setup_cfg

COMMON = {
    "DATALOADER.TEST.BATCH_SIZE": 500, "DATALOADER.NUM_WORKERS": 8, "INPUT.SIZE": (224, 224),
    "INPUT.INTERPOLATION": "bicubic", "INPUT.PIXEL_MEAN": [0.48145466, 0.4578275, 0.40821073],
    "INPUT.PIXEL_STD": [0.26862954, 0.26130258, 0.27577711],
    "INPUT.TRANSFORMS": ("random_resized_crop", "random_flip", "normalize"), "OPTIM.NAME": "adam", "OPTIM.LR": 0.0025,
    "OPTIM.LR_SCHEDULER": "cosine", "OPTIM.WARMUP_EPOCH": 1, "OPTIM.WARMUP_TYPE": "constant",
    "OPTIM.WARMUP_CONS_LR": 1e-5, "OPTIM.EPS": 1e-3, "MODEL.BACKBONE.NAME": "ViT-B/16",
    "TRAINER.HICROPL.CTX_INIT": "a photo of a", "TRAINER.HICROPL.PREC": "fp16",
    "TRAINER.HICROPL.TEACHER_NAME": "ViT-B/16", "TRAINER.HICROPL.LAMBD": 12.0,
    "TRAINER.HICROPL.MAPPER_MODE": "released",
    # inherited Dassl defaults the protocols rely on (SPEC §6.2)
    "OPTIM.WEIGHT_DECAY": 5e-4, "OPTIM.ADAM_BETA1": 0.9, "OPTIM.ADAM_BETA2": 0.999, "TEST.FINAL_MODEL": "best_val",
}
B2N = {"TRAINER.HICROPL.N_CTX": 16, "TRAINER.HICROPL.CROSS_LAYER": 6, "TRAINER.HICROPL.PROMPT_DEPTH": 12,
       "TRAIN.PRINT_FREQ": 20}
CONFIGS = {
    "vit_b16_c2_ep40_batch128_16ctx": {**B2N, "DATALOADER.TRAIN_X.BATCH_SIZE": 128, "OPTIM.MAX_EPOCH": 40},
    "vit_b16_c2_ep50_batch32_16ctx": {**B2N, "DATALOADER.TRAIN_X.BATCH_SIZE": 32, "OPTIM.MAX_EPOCH": 50},
    "vit_b16_c2_ep50_batch32_16ctx_few_shot": {**B2N, "DATALOADER.TRAIN_X.BATCH_SIZE": 32, "OPTIM.MAX_EPOCH": 50},
    "vit_b16_c2_ep5_batch32_2ctx_cross_datasets": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 32, "OPTIM.MAX_EPOCH": 5, "TRAIN.PRINT_FREQ": 5, "TRAINER.HICROPL.N_CTX": 2,
        "TRAINER.HICROPL.CROSS_LAYER": 5, "TRAINER.HICROPL.PROMPT_DEPTH": 6},
}


def value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_protocol_config_values(name):
    cfg = setup_cfg(build_parser().parse_args(["--config-file", f"configs/trainers/HiCroPL/{name}.yaml"]))
    for key, expected in {**COMMON, **CONFIGS[name]}.items():
        got = value(cfg, key)
        assert type(got) is type(expected) and got == pytest.approx(expected), (key, got, expected)


def test_demo_and_zero_shot_configs_load():
    cfg = setup_cfg(build_parser().parse_args(["--config-file", "configs/trainers/HiCroPL/demo_tiny.yaml"]))
    assert cfg.MODEL.BACKBONE.NAME == "random:tiny" and cfg.TRAINER.HICROPL.PREC == "fp32"
    cfg = setup_cfg(build_parser().parse_args(["--config-file", "configs/trainers/ZeroshotCLIP/vit_b16.yaml"]))
    assert cfg.TRAINER.ZSCLIP.CLASSIFIER == "template"
