"""``build_optimizer``: a torch optimizer from the ``OPTIM`` config node."""
import warnings
from typing import Any, Iterable, List, Optional, Union

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from dassl.utils import UserError

__all__ = ["AVAI_OPTIMS", "build_optimizer"]

# Values of OPTIM.NAME.
AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]


def build_optimizer(
    model: Union[nn.Module, Iterable[Any]], optim_cfg: CN, param_groups: Optional[List[dict]] = None
) -> torch.optim.Optimizer:
    """Build the optimizer named ``optim_cfg.NAME`` over ``model``.

    Parameters come from ``param_groups`` if given (``STAGED_LR`` is then ignored); else with
    ``STAGED_LR`` from two groups (child modules not in ``NEW_LAYERS`` at ``LR * BASE_LR_MULT``, then
    those in ``NEW_LAYERS`` at ``LR``); else ``model.parameters()`` (or ``model`` itself if it is an
    iterable of tensors/groups). Frozen parameters may be included: they get no gradient, so every
    optimizer skips them. ``adam`` uses ``eps=OPTIM.EPS`` (HiCroPL configs: 1e-3); the others keep
    torch's default epsilon.
    """
    optim = optim_cfg.NAME
    lr = optim_cfg.LR
    weight_decay = optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)

    if optim not in AVAI_OPTIMS:
        raise UserError(f"OPTIM.NAME must be one of {', '.join(AVAI_OPTIMS)}, got {optim!r}")

    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn("STAGED_LR is ignored when param_groups are given; put the staged lrs into param_groups")

    if param_groups is None:
        if optim_cfg.STAGED_LR:
            param_groups = _staged_param_groups(model, optim_cfg)
        elif isinstance(model, nn.Module):
            param_groups = model.parameters()
        else:
            param_groups = model

    if optim == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=optim_cfg.EPS)
    if optim == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, amsgrad=True)
    if optim == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=weight_decay,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
        )
    if optim == "rmsprop":
        return torch.optim.RMSprop(
            param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=weight_decay, alpha=optim_cfg.RMSPROP_ALPHA
        )
    if optim == "radam":
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)


def _staged_param_groups(model: Union[nn.Module, Any], optim_cfg: CN) -> List[dict]:
    if not isinstance(model, nn.Module):
        raise TypeError("When STAGED_LR is True, model given to build_optimizer() must be an instance of nn.Module")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    new_layers = optim_cfg.NEW_LAYERS
    if isinstance(new_layers, str):
        new_layers = [new_layers]
    if not new_layers:
        warnings.warn("new_layers is empty (it has no effect)")
    base_params, new_params = [], []
    for name, module in model.named_children():
        (new_params if name in new_layers else base_params).extend(module.parameters())
    return [{"params": base_params, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT}, {"params": new_params}]
