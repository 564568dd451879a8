"""Top-k accuracy of a batch."""
from typing import List, Sequence, Union

import torch

__all__ = ["compute_accuracy"]


def compute_accuracy(
    output: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor, topk: Sequence[int] = (1,)
) -> List[torch.Tensor]:
    """Top-k accuracies in percent over the batch, one 1-element tensor per k.

    ``output``: logits ``(B, num_classes)`` (or a tuple/list whose first element they are);
    ``target``: labels ``(B,)``. Projects use ``compute_accuracy(output, label)[0].item()``.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()  # (maxk, B)
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
