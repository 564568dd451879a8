"""The paper's ablations (Tables 4-7, 11-13, Fig. 4) as base-to-novel runs: one row = one set of config overrides.

Each table lists its rows in the paper's order: (row id, label as printed in the paper, ``TRAINER.HICROPL``
overrides). The switches are documented in ``trainers/config.py``. Every row whose overrides give the published
HiCroPL is the row ``hicropl`` (no overrides), so that run is shared by all tables. Fig. 4 has no numbers in the
paper; its rows here: depth J = 1..12 with k = CROSS_LAYER = min(6, J) (the published boundary wherever it fits),
and prompt lengths m = 2, 4, 8, 16, 32 with random initialisation at every length (``CTX_INIT ''``; the published
config would initialise m <= 4 from "a photo of a").

Used by ``scripts/hicropl/ablation.sh`` (``python scripts/ablations.py TABLE`` prints one line per row:
``ROW KEY VALUE ...``) and by ``scripts/parse_results.py --protocol ablation``.
"""
import sys
from typing import Dict, List, Tuple

PUBLISHED = "hicropl"  # row id of the published configuration
PUBLISHED_DEPTH, PUBLISHED_CROSS_LAYER, PUBLISHED_N_CTX = 12, 6, 16

Row = Tuple[str, str, Dict[str, object]]  # (row id, label, TRAINER.HICROPL overrides)


def _depth_rows() -> List[Row]:
    rows = []
    for depth in range(1, PUBLISHED_DEPTH + 1):
        cross = min(PUBLISHED_CROSS_LAYER, depth)
        if depth == PUBLISHED_DEPTH:
            rows.append((PUBLISHED, f"J = {depth}, k = {cross} (HiCroPL)", {}))
        else:
            rows.append((f"depth{depth}", f"J = {depth}, k = {cross}", {"PROMPT_DEPTH": depth, "CROSS_LAYER": cross}))
    return rows


def _length_rows() -> List[Row]:
    return [(PUBLISHED, f"m = {m} (HiCroPL)", {}) if m == PUBLISHED_N_CTX
            else (f"nctx{m}", f"m = {m}", {"N_CTX": m, "CTX_INIT": ""}) for m in (2, 4, 8, 16, 32)]


# table id -> (title, rows)
ABLATIONS: Dict[str, Tuple[str, List[Row]]] = {
    "4": ("Table 4: direction of knowledge flow (\"|\" = layer boundary k)", [
        ("i2t", "unidirectional I->T", {"FLOW": "i2t"}),
        ("t2i", "unidirectional T->I", {"FLOW": "t2i"}),
        ("i2t_t2i", "bidirectional I->T | T->I", {"FLOW": "i2t_t2i"}),
        (PUBLISHED, "bidirectional T->I | I->T (HiCroPL)", {}),
    ]),
    "5": ("Table 5: layer boundary k", [
        (PUBLISHED, "k = 6 (HiCroPL)", {}) if k == PUBLISHED_CROSS_LAYER else (f"k{k}", f"k = {k}", {"CROSS_LAYER": k})
        for k in (2, 4, 6, 8, 10)
    ]),
    "6": ("Table 6: mapper design (T->I mapper | I->T mapper)", [
        ("single_single", "Single-scale | Single-scale", {"T2I_SCALE": "single", "I2T_SCALE": "single"}),
        ("single_multi", "Single-scale | Multi-scale", {"T2I_SCALE": "single"}),
        (PUBLISHED, "Multi-scale | Multi-scale (HiCroPL)", {}),
    ]),
    "7": ("Table 7: prompt compression before the mapper", [
        ("mean", "equal weighting (averaging)", {"COMPRESSION": "mean"}),
        ("mlp", "2-layer MLP", {"COMPRESSION": "mlp"}),
        (PUBLISHED, "LKP (HiCroPL)", {}),
    ]),
    "11": ("Table 11: components (BKF = bidirectional knowledge flow, L_cons = consistency loss)", [
        ("no_bkf_no_cons", "w/o BKF, w/o L_cons", {"FLOW": "none", "LAMBD": 0.0}),
        ("no_bkf", "w/o BKF, with L_cons", {"FLOW": "none"}),
        ("no_cons", "with BKF, w/o L_cons", {"LAMBD": 0.0}),
        (PUBLISHED, "with BKF, with L_cons (HiCroPL)", {}),
    ]),
    "12": ("Table 12: frozen text target of the consistency loss", [
        ("template", "\"a photo of a {}.\" (KgCoOp)", {"CONSISTENCY_TARGET": "template"}),
        ("imagenet_templates", "ImageNet template ensemble (PromptSRC)", {"CONSISTENCY_TARGET": "imagenet_templates"}),
        ("random_description", "one random LLM description (CoPrompt)", {"CONSISTENCY_TARGET": "random_description"}),
        (PUBLISHED, "averaged LLM descriptions (HiCroPL)", {}),
    ]),
    "13": ("Table 13: consistency criterion", [
        ("mse", "MSE", {"CONSISTENCY_CRITERION": "mse"}),
        ("l1", "L1", {"CONSISTENCY_CRITERION": "l1"}),
        (PUBLISHED, "cosine (HiCroPL)", {}),
    ]),
    "depth": ("Fig. 4: prompt depth J (k = min(6, J))", _depth_rows()),
    "length": ("Fig. 4: prompt length m (random init)", _length_rows()),
}


def config_value(value: object) -> str:
    """A value as one shell word that yacs decodes back to it (``''`` is the empty string)."""
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


def row_line(row: Row) -> str:
    """``ROW KEY VALUE ...`` for scripts/hicropl/ablation.sh."""
    row_id, _, overrides = row
    return " ".join([row_id] + [f"TRAINER.HICROPL.{key} {config_value(v)}" for key, v in overrides.items()])


def main(argv: List[str]) -> int:
    if len(argv) != 1 or argv[0] not in ABLATIONS:
        given = f"'{argv[0]}'" if argv else "nothing"
        print(f"error: ablation table must be one of {', '.join(ABLATIONS)}; got {given}", file=sys.stderr)
        return 2
    for row in ABLATIONS[argv[0]][1]:
        print(row_line(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
