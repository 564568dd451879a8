"""Linear-probe CLIP (HiCroPL Table 14 baseline), registered as ``LinearProbeCLIP``. Facts:
../shared/methods/LINEAR_PROBE.md.

Frozen CLIP image features (the unprompted image tower's pooled, projected output, NOT normalised; any backbone)
of the K-shot training images, read with the TEST transform (resize + centre crop, no augmentation), and an
L2-regularised multinomial logistic regression (scikit-learn, L-BFGS, max_iter 1000). Its inverse regularisation
strength C is chosen on the few-shot validation split by the published search:

    coarse sweep C in [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]: c0 = the first maximiser of val accuracy
    [lo, hi] = [c0 / 10, c0 * 10]; NUM_STEP times: if acc(lo) < acc(hi): pick hi, lo = sqrt(lo * hi)
                                                      else:                pick lo, hi = sqrt(lo * hi)
    the classifier of the last pick is tested on the full test split.

Differences from the released scripts: the K-shot train / min(K, 4)-shot val subsets are the engine's (Dassl's cached
few-shot split of the run's seed, the same images the prompt learners train on), not NumPy draws from the feature
arrays; a dataset without a val split (the ImageNet variants) selects C on its test split, as the released code does
for ImageNet. Train / val features are cached on disk (keyed by the image-tower weights, the image list and the
transform settings; the test images are read once per test). The fitted classifier is a ``linear_probe`` Linear
layer saved as ``<output>/linear_probe/model.pth.tar-1``; the test result is recorded in results.json like every run.
"""
import hashlib
import json
import math
import os
import tempfile
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode

import clip
from clip.model import CLIP
from common.errors import UserError
from dassl.data import DatasetWrapper
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY, TrainerX
from trainers.hicropl import cache_dir

COARSE_C = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def search_c(val_accuracy: Callable[[float], float], num_step: int = 8) -> Tuple[float, List[float]]:
    """The published C search on ``val_accuracy(C)`` (one fit each): returns (chosen C, every C picked per round).

    Ties: the coarse sweep keeps the first (larger) C; a round moves right only if acc(lo) < acc(hi).
    """
    scores = [val_accuracy(c) for c in COARSE_C]
    peak = COARSE_C[scores.index(max(scores))]
    lo, hi = peak / 10, peak * 10
    picked = []
    for _ in range(num_step):
        middle = math.sqrt(lo * hi)
        if val_accuracy(lo) < val_accuracy(hi):
            picked.append(hi)
            lo = middle
        else:
            picked.append(lo)
            hi = middle
    return (picked[-1] if picked else peak), picked


def logistic_regression(c: float):
    """The published classifier for one C (scikit-learn; a one-line error when it is not installed)."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UserError("LinearProbeCLIP needs scikit-learn: pip install scikit-learn") from None
    return LogisticRegression(solver="lbfgs", max_iter=1000, C=c)


def fit_linear_probe(train: Tuple[np.ndarray, np.ndarray], val: Tuple[np.ndarray, np.ndarray],
                     num_step: int = 8):
    """train / val = (features (N, d), labels (N,)) -> (classifier fitted with the searched C, C)."""
    fitted = {}

    def fit(c: float):
        if c not in fitted:
            fitted[c] = logistic_regression(c).fit(*train)
        return fitted[c]

    c, _ = search_c(lambda c: float((fit(c).predict(val[0]) == val[1]).mean()), num_step)
    return fit(c), c


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(TrainerX):
    """Extract (cached) frozen image features, search C, fit, test; ``--eval-only`` reloads the fitted layer."""

    model_name = "linear_probe"
    cfg_node = "LP"  # its TRAINER node (engine run identity)

    def check_cfg(self, cfg: CfgNode) -> None:
        if cfg.TRAINER.LP.NUM_STEP < 0:
            raise UserError(f"TRAINER.LP.NUM_STEP is {cfg.TRAINER.LP.NUM_STEP}; it must be >= 0")
        if cfg.DATASET.get("SUBSAMPLE_CLASSES", "all") != "all":
            raise UserError("LinearProbeCLIP cannot classify unseen classes; use DATASET.SUBSAMPLE_CLASSES all")

    def build_model(self) -> None:
        print(f"Loading CLIP (backbone: {self.cfg.MODEL.BACKBONE.NAME})")
        self.clip_model: CLIP = clip.load(self.cfg.MODEL.BACKBONE.NAME, device=self.device)[0].requires_grad_(False)
        # (n_cls, d) weights and (n_cls,) bias of the fitted multinomial logistic regression (zero until fitted)
        self.model = nn.Linear(self.clip_model.embed_dim, self.dm.num_classes).to(self.device)
        nn.init.zeros_(self.model.weight)
        nn.init.zeros_(self.model.bias)
        self.register_model(self.model_name, self.model, None, None)

    # --- features ----------------------------------------------------------------------------------------------------

    def _digest(self, items: Sequence) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.clip_model.visual.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
        inp = self.cfg.INPUT
        digest.update(json.dumps([list(inp.SIZE), inp.INTERPOLATION, list(inp.PIXEL_MEAN), list(inp.PIXEL_STD),
                                  [[item.impath, item.label] for item in items]]).encode())
        return digest.hexdigest()

    @torch.no_grad()
    def features(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """(features (N, d) float32, labels (N,)) of ``split`` (train: the K-shot train_x) with the test transform."""
        dataset = self.dm.dataset
        items = {"train": dataset.train_x, "val": dataset.val or dataset.test, "test": dataset.test}[split]
        path = cache_dir() / "linear_probe" / f"{self._digest(items)}.npz"
        if path.is_file():
            with np.load(path) as cached:
                print(f"Linear probe: {split} features loaded from {path}")
                return cached["features"], cached["labels"]
        wrapper = DatasetWrapper(self.cfg, items, transform=build_transform(self.cfg, is_train=False), is_train=False)
        loader = DataLoader(wrapper, batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE, shuffle=False,
                            num_workers=self.cfg.DATALOADER.NUM_WORKERS)
        features, labels = [], []
        for batch in loader:
            features.append(self.clip_model.encode_image(batch["img"].to(self.device)).float().cpu())
            labels.append(batch["label"])
        features, labels = torch.cat(features).numpy(), torch.cat(labels).numpy()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, features=features, labels=labels)
            os.replace(tmp, path)
            print(f"Linear probe: {len(labels)} {split} features cached at {path}")
        except OSError as e:
            print(f"Linear probe: could not cache the {split} features ({e}); continuing")
        return features, labels

    # --- fit and test ------------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Fit the probe (published C search), save it as epoch 1, then test on the test split."""
        classifier, c = fit_linear_probe(self.features("train"), self.features("val"), self.cfg.TRAINER.LP.NUM_STEP)
        print(f"Linear probe: C = {c:.6g}")
        with torch.no_grad():
            weight = torch.from_numpy(classifier.coef_).float()
            bias = torch.from_numpy(classifier.intercept_).float()
            if weight.shape[0] == 1:  # scikit-learn's binary form: one row for class 1
                weight, bias = torch.cat([-weight, weight]) / 2, torch.cat([-bias, bias]) / 2
            rows = torch.as_tensor(classifier.classes_)  # classes seen in training
            self.model.weight.zero_()
            self.model.bias.fill_(-1e4)  # a class without training images is never predicted
            self.model.weight[rows] = weight.to(self.device)
            self.model.bias[rows] = bias.to(self.device)
        self.save_model(0, self.output_dir)
        if hasattr(self, "_note_loaded_model"):  # this engine: the test record names the saved probe (real Dassl: no)
            self._note_loaded_model(self.output_dir, 1)
        self.test()

    @torch.no_grad()
    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        """image (B, 3, R, R) -> logits (B, n_cls) of the probe on the unnormalised frozen image features."""
        return self.model(self.clip_model.encode_image(input).float())

