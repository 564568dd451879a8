"""The protocol drivers run the comparison methods of part II with no per-method code: TRAINER=<Method> trains on
its published config, the novel test loads the last epoch from the method's own checkpoint folder
(``VLPromptLearner/``, ``adapter_learner/``), and parse_results.py puts them side by side."""
import json

from test_protocols_methods import parse
from test_protocols_scripts import run_script

TINY = ("MODEL.BACKBONE.NAME random:tiny OPTIM.MAX_EPOCH 1 DATALOADER.NUM_WORKERS 0 TRAINER.IVLP.PREC fp32 "
        "TRAINER.IVLP.PROMPT_DEPTH_TEXT 2 TRAINER.IVLP.PROMPT_DEPTH_VISION 2 TRAINER.MMA.PREC fp32 "
        "TRAINER.MMA.ADAPTER_START 2 TRAINER.MMA.ADAPTER_END 4 INPUT.SIZE (32,32) DATALOADER.TEST.BATCH_SIZE 200 "
        "USE_CUDA False")
PUBLISHED = {"IVLP": ("vit_b16_c2_ep5_batch4_2+2ctx", "VLPromptLearner"), "MMA": ("vit_b16_ep5", "adapter_learner")}


def test_toy_shapes_base_to_novel_of_ivlp_and_mma_side_by_side(tmp_path):
    env = {"OUTPUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "SEEDS": "1", "DATASETS": "toy_shapes",
           "EXTRA_OPTS": TINY}
    for method, (cfg, folder) in PUBLISHED.items():
        run_script("reproduce_base2new.sh", {**env, "TRAINER": method})
        run = tmp_path / "out" / "base2new" / "test_new" / "toy_shapes" / "shots_16" / method / cfg / "seed1"
        record = json.loads((run / "results.json").read_text())["evaluations"][-1]
        assert record["trainer"] == method and record["subsample"] == "new"
        assert record["checkpoint"].endswith(f"{method}/{cfg}/seed1/{folder}/model.pth.tar-1")
    text = parse(str(tmp_path / "out"), "--protocol", "base2new", "--datasets", "toy_shapes")
    header = next(line for line in text.splitlines() if line.startswith("| Dataset"))
    assert "IVLP Base | IVLP Base (paper)" in header and "MMA HM | MMA HM (paper)" in header
