"""Checks that every CLIP-based trainer makes once its backbone is loaded (each failure is one ``UserError`` line)."""
from typing import Sequence

from clip.model import CLIP
from common.errors import UserError


def check_input_size(input_size: Sequence[int], clip_model: CLIP, backbone: str) -> None:
    """``INPUT.SIZE`` (height, width) must be the backbone's input resolution (r, r).

    CLIP's image towers have a fixed-size positional embedding (ViT: one per patch; ResNet: the attention pool's
    grid), so another size would fail at the first forward pass with a shape error, after the data was built.
    """
    resolution = clip_model.visual.input_resolution
    if tuple(input_size) != (resolution, resolution):
        raise UserError(
            f"INPUT.SIZE {tuple(input_size)} does not fit the backbone {backbone}, whose image tower takes "
            f"{resolution}x{resolution} images; set INPUT.SIZE ({resolution}, {resolution})"
        )
