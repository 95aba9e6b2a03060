"""The training losses (:data:`~.config.LOSSES`)."""

from __future__ import annotations

from .config import IGNORE


class DiceBCELoss:
    """Soft Dice (smp) + binary cross-entropy over labelled pixels; ``IGNORE`` pixels excluded."""

    def __init__(self) -> None:
        import segmentation_models_pytorch as smp

        self.dice = smp.losses.DiceLoss("binary", from_logits=True, ignore_index=IGNORE)

    def __call__(self, logits, target):
        return masked_bce(logits, target) + self.dice(logits, target)


class LovaszBCELoss:
    """Lovasz hinge (smp; a surrogate of the IoU itself, over the whole batch) + binary
    cross-entropy over labelled pixels; ``IGNORE`` pixels excluded."""

    def __init__(self) -> None:
        import segmentation_models_pytorch as smp

        self.lovasz = smp.losses.LovaszLoss("binary", per_image=False, ignore_index=IGNORE, from_logits=True)

    def __call__(self, logits, target):
        return masked_bce(logits, target) + self.lovasz(logits, target)


def masked_bce(logits, target):
    """Binary cross-entropy averaged over the pixels that are not ``IGNORE``."""
    import torch.nn.functional as F

    keep = (target != IGNORE).float()
    bce = F.binary_cross_entropy_with_logits(logits, target * keep, reduction="none")
    return (bce * keep).sum() / keep.sum().clamp_min(1.0)


def make_loss(name: str):
    """The loss a :class:`~.config.TrainConfig` names."""
    return {"dice_bce": DiceBCELoss, "lovasz_bce": LovaszBCELoss}[name]()


