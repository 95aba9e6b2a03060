"""Adapting a model to a new stack from a few labelled slices (``TrainConfig.bn``,
``encoder_lr``, ``pseudo_*``, ``stack_slices``): batch-norm statistics re-estimated on the stack
(AdaBN) or kept, a frozen encoder that does not change, and weak labels from the model's
confident predictions on the unlabelled slices (self-training)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_mitoseg.inference import _to_network, predict_slice
from napari_mitoseg.model import load_model
from napari_mitoseg.training import (
    CHECKPOINT,
    IGNORE,
    CropSampler,
    TrainConfig,
    TrainingError,
    iter_train,
    prepare,
)
from napari_mitoseg.training import engine as engine_mod
from napari_mitoseg.training.adapt import adapt_batchnorm, pseudo_masks, spread

SMALL = TrainConfig(steps=4, batch_size=2, tile=64, lr=3e-3, warmup=1, val_every=0, checkpoint_every=0,
                    scale_range=(1.0, 1.0))


def _finetune(image, mask, base, cfg, **kwargs):
    gen = iter_train(image, mask, config=cfg, device="cpu", base=base, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _bn_buffers(net, prefix: str = "") -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()
            if k.startswith(prefix) and ("running_" in k or "num_batches" in k)}


def _first_bn(net):
    return next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_adabn_sets_the_batchnorm_statistics_to_the_stacks(sample, tiny_model):
    """After AdaBN on a slice, the first batch-norm layer's running mean is the mean of what it
    sees of that slice at inference; the weights stay."""
    image, _ = sample
    # a multiple of the stride: no padding
    bright = np.clip(image[0, :96, :120].astype(np.float32) * 0.5 + 120, 0, 255).astype(np.uint8)
    net, bn = tiny_model.net, _first_bn(tiny_model.net)
    before = bn.running_mean.clone()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running_" not in k and "num_b" not in k}
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].mean((0, 2, 3)).detach()))
    try:
        adapt_batchnorm(net, tiny_model.spec, [bright], [1.0], torch.device("cpu"))
        net.eval()
        with torch.no_grad():
            x = torch.from_numpy(_to_network([bright], tiny_model.spec))[:, None]
            net(x)
    finally:
        hook.remove()
    assert not net.training
    torch.testing.assert_close(bn.running_mean, seen[-1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(bn.running_mean, before)
    for k, v in net.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_bn_stack_fine_tune_uses_the_unlabelled_slices(sample, tiny_model_dir, monkeypatch):
    """``bn="stack"`` re-estimates the statistics once, on the labelled and (at most
    ``stack_slices``) unlabelled slices, and keeps them through the steps."""
    image, mask = sample
    calls = []
    real = engine_mod.adapt_batchnorm

    def spy(net, spec, ims, ratios, dev):
        calls.append(len(ims))
        return real(net, spec, ims, ratios, dev)

    monkeypatch.setattr(engine_mod, "adapt_batchnorm", spy)
    cfg = dataclasses.replace(SMALL, bn="stack", stack_slices=1)
    tuned = _finetune(image[:1], mask[:1], tiny_model_dir, cfg, unlabelled=image[1:])
    assert calls == [2]  # 1 labelled + 1 of the 2 unlabelled
    fresh = load_model(tiny_model_dir, device="cpu")
    adapt_batchnorm(fresh.net, fresh.spec, [image[0], image[1]], [1.0, 1.0], torch.device("cpu"))
    a, b = _bn_buffers(tuned.net), _bn_buffers(fresh.net)
    for k in a:
        if "running_" in k:  # the labelled slice went through prepare(): close, not equal
            torch.testing.assert_close(a[k], b[k], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_frozen_batchnorm_keeps_the_base_statistics(bn, sample, tiny_model_dir):
    image, mask = sample
    base = load_model(tiny_model_dir, device="cpu")
    tuned = _finetune(image, mask, tiny_model_dir, dataclasses.replace(SMALL, bn=bn))
    before, after = _bn_buffers(base.net), _bn_buffers(tuned.net)
    same = all(torch.equal(before[k], after[k]) for k in before if "running_" in k)
    assert same == (bn == "frozen")
    w = "segmentation_head.0.weight"
    assert not torch.equal(base.net.state_dict()[w], tuned.net.state_dict()[w])  # it learnt


def test_a_frozen_encoder_does_not_change(sample, tiny_model_dir):
    image, mask = sample
    base = load_model(tiny_model_dir, device="cpu")
    tuned = _finetune(image, mask, tiny_model_dir, dataclasses.replace(SMALL, encoder_lr=0.0))
    sb, st = base.net.state_dict(), tuned.net.state_dict()
    enc = [k for k in sb if k.startswith("encoder.")]
    assert enc and all(torch.equal(sb[k], st[k]) for k in enc)
    assert any(not torch.equal(sb[k], st[k]) for k in sb if k.startswith("decoder."))


def test_the_encoder_learns_at_its_share_of_the_rate(tiny_model):
    from napari_mitoseg.training.adapt import param_groups

    groups = param_groups(tiny_model.net, dataclasses.replace(SMALL, encoder_lr=0.1))
    assert [g.get("lr") for g in groups] == [None, pytest.approx(SMALL.lr * 0.1)]
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in tiny_model.net.parameters())


def test_pseudo_masks_label_only_where_the_model_is_sure(sample, tiny_model):
    image, _ = sample
    (m,) = pseudo_masks(tiny_model, [image[0]], [1.0], 0.6)
    p = predict_slice(tiny_model, image[0])
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1, IGNORE}
    np.testing.assert_array_equal(m == 1, p > 0.6)
    np.testing.assert_array_equal(m == 0, p < 0.4)
    np.testing.assert_array_equal(m == IGNORE, (p >= 0.4) & (p <= 0.6))


def test_self_training_labels_the_unlabelled_slices_at_its_step(sample, tiny_model_dir, monkeypatch):
    """With ``pseudo_after`` 0.5 of 4 steps, the model as it is after step 2 labels the
    unlabelled slices once; their weak labels (255 where unsure) then share the crops."""
    image, mask = sample
    seen = []
    real_pseudo, real_add = engine_mod.pseudo_masks, CropSampler.add_slices

    def spy_pseudo(model, ims, ratios, confidence):
        masks = real_pseudo(model, ims, ratios, confidence)
        for m in masks:  # a random tiny model is sure of little: some sure and unsure pixels
            m[:5], m[5:10], m[10:15] = 1, 0, IGNORE
        seen.append(("label", len(ims), confidence))
        return masks

    def spy_add(self, ims, masks, ratios, share):
        seen.append(("add", [set(np.unique(m)) <= {0, 1, IGNORE} and (m == IGNORE).any() for m in masks], share))
        real_add(self, ims, masks, ratios, share)
        assert self.p_slice[-len(masks):].sum() == pytest.approx(share)

    steps = []
    real_step = engine_mod._one_step
    monkeypatch.setattr(engine_mod, "pseudo_masks", spy_pseudo)
    monkeypatch.setattr(CropSampler, "add_slices", spy_add)
    monkeypatch.setattr(engine_mod, "_one_step", lambda run, loss: steps.append((run.step, len(seen))) or
                        real_step(run, loss))
    cfg = dataclasses.replace(SMALL, pseudo_fraction=0.4, pseudo_after=0.5, pseudo_confidence=0.7)
    _finetune(image[:1], mask[:1], tiny_model_dir, cfg, unlabelled=image[1:])
    assert seen == [("label", 2, 0.7), ("add", [True, True], 0.4)]
    assert steps == [(0, 0), (1, 0), (2, 2), (3, 2)]


def test_added_slices_take_their_share_of_the_crops(rng):
    cfg = TrainConfig(batch_size=64, tile=32, scale_range=(1.0, 1.0), augment="basic")
    ims, mks = prepare(rng.random((2, 64, 64)).astype(np.float32), np.zeros((2, 64, 64), np.uint8))
    sampler = CropSampler(ims, mks, cfg)
    weak = np.full((64, 64), IGNORE, np.uint8)
    weak[:, :32] = 1
    sampler.add_slices([ims[0]], [weak], [1.0], 0.25)
    np.testing.assert_allclose(sampler.p_slice, [0.375, 0.375, 0.25])
    drawn = np.concatenate([sampler.sample(s)[1].numpy() for s in range(4)])
    from_weak = np.mean([(y == 1).any() or (y == IGNORE).any() for y in drawn])
    assert 0.15 < from_weak < 0.35


def test_resume_with_self_training_is_exact(sample, tiny_model_dir, tmp_path, monkeypatch):
    """The weak labels travel in the checkpoint: a resumed run draws what an uninterrupted one
    does."""
    image, mask = sample
    real = engine_mod.pseudo_masks  # a random tiny model is sure of little: label nearly all
    monkeypatch.setattr(engine_mod, "pseudo_masks", lambda m, ims, r, c: real(m, ims, r, 0.5 + 1e-6))
    cfg = dataclasses.replace(SMALL, steps=6, checkpoint_every=1, pseudo_fraction=0.5, pseudo_after=0.3,
                              pseudo_confidence=0.55, bn="stack")
    ref = _finetune(image[:1], mask[:1], tiny_model_dir, cfg, unlabelled=image[1:])
    gen = iter_train(image[:1], mask[:1], config=cfg, device="cpu", base=tiny_model_dir,
                     unlabelled=image[1:], out_dir=tmp_path / "run")
    for p in gen:
        if p.step == 4:
            break
    gen.close()
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["pseudo"]
    assert len(saved) == 2 and all((m != IGNORE).mean() > 0.5 for m in saved)
    resumed = _finetune(image[:1], mask[:1], tiny_model_dir, cfg, unlabelled=image[1:],
                        out_dir=tmp_path / "run", resume=True)
    for k, v in ref.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def test_spread_picks_evenly():
    assert spread(range(10), 3) == [0, 4, 9]
    assert spread([2, 5], 8) == [2, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"bn": "adapt"}, "bn must be one of train, frozen, stack"),
     ({"encoder_lr": 1.5}, "encoder_lr must be a number from 0 to 1"),
     ({"pseudo_fraction": 0.95}, "pseudo_fraction must be a number from 0 to 0.9"),
     ({"pseudo_confidence": 0.5}, "pseudo_confidence must be a number above 0.5"),
     ({"pseudo_confidence": 1.0}, "pseudo_confidence must be below 1"),
     ({"pseudo_after": 1.0}, "pseudo_after must be below 1"),
     ({"stack_slices": 0}, "stack_slices must be a whole number >= 1")],
)
def test_adaptation_settings_are_checked(kwargs, message):
    with pytest.raises(TrainingError, match=message):
        TrainConfig(**kwargs)


def test_self_training_without_unlabelled_slices_says_it_is_skipped(sample, tiny_model_dir, caplog):
    image, mask = sample
    cfg = dataclasses.replace(SMALL, steps=2, pseudo_fraction=0.3)
    with caplog.at_level("INFO", logger="napari_mitoseg"):
        tuned = _finetune(image, mask, tiny_model_dir, cfg)
    assert tuned is not None
    assert any("self-training skipped" in r.getMessage() and getattr(r, "note", False) for r in caplog.records)
