"""The training loss."""

from __future__ import annotations

from .config import IGNORE


class DiceBCELoss:
    """Soft Dice (smp) + binary cross-entropy over labelled pixels; ``IGNORE`` pixels excluded."""

    def __init__(self) -> None:
        import segmentation_models_pytorch as smp

        self.dice = smp.losses.DiceLoss("binary", from_logits=True, ignore_index=IGNORE)

    def __call__(self, logits, target):
        import torch.nn.functional as F

        keep = (target != IGNORE).float()
        t = target * keep
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        bce = (bce * keep).sum() / keep.sum().clamp_min(1.0)
        return bce + self.dice(logits, target)


