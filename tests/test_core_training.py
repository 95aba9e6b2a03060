"""The training engine: the loss falls, checkpoints load, resuming is exact, fine-tuning starts
from its base, and ignored (255) pixels are left out of the loss."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_mitoseg.inference import predict
from napari_mitoseg.model import build_model, load_model
from napari_mitoseg.training import (
    CHECKPOINT,
    HISTORY,
    IGNORE,
    LOSSES,
    CropSampler,
    TrainConfig,
    TrainingError,
    Volume,
    em_artefacts,
    iter_train,
    iter_train_volumes,
    make_loss,
    prepare,
    respec,
    split_validation,
    train,
    volume_weights,
)

SMALL = TrainConfig(steps=6, batch_size=4, tile=64, lr=3e-3, warmup=2, val_every=0, checkpoint_every=0)


def _run(image, mask, spec, config=SMALL, seed=0, **kwargs):
    """All progress reports and the trained model; the network's initial weights seeded."""
    torch.manual_seed(seed)
    gen = iter_train(image, mask, spec=spec, config=config, device="cpu", **kwargs)
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            return progress, stop.value


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_a_few_steps_lower_the_loss(sample, tiny_spec):
    image, mask = sample
    cfg = TrainConfig(steps=30, batch_size=4, tile=64, lr=3e-3, warmup=3, val_every=0, checkpoint_every=0)
    progress, model = _run(image, mask, tiny_spec, cfg)
    losses = [p.loss for p in progress]
    assert [p.step for p in progress] == list(range(1, 31))
    assert progress[-1].done and not any(p.done for p in progress[:-1])
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert not model.net.training


def test_checkpoint_written_loads_and_predicts(sample, tiny_spec, tmp_path):
    image, mask = sample
    out = tmp_path / "run"
    _, trained = _run(image, mask, tiny_spec, out_dir=out, info={"note": "test"})
    assert {p.name for p in out.iterdir()} >= {CHECKPOINT, HISTORY, "last", "best"}
    history = json.loads((out / HISTORY).read_text())
    assert [h["step"] for h in history] == list(range(1, 7))
    loaded = load_model(out / "last", device="cpu")
    assert loaded.spec == tiny_spec
    assert loaded.info["step"] == loaded.info["steps"] == 6
    assert loaded.info["note"] == "test"
    assert loaded.info["train_config"] == json.loads(json.dumps(dataclasses.asdict(SMALL)))
    ref = trained.net.state_dict()
    for k, v in loaded.net.state_dict().items():  # saved as float16
        torch.testing.assert_close(v, ref[k], rtol=1e-3, atol=1e-4)
    prob, lab = predict(loaded, image)
    assert prob.shape == lab.shape == image.shape
    assert prob.min() >= 0 and prob.max() <= 1


def test_validation_keeps_the_best_model(sample, tiny_spec, tmp_path):
    image, mask = sample
    cfg = dataclasses.replace(SMALL, val_every=3)
    progress, _ = _run(image[:2], mask[:2], tiny_spec, cfg, val_images=image[2:], val_masks=mask[2:],
                       out_dir=tmp_path / "run")
    assert [p.step for p in progress if p.val_iou is not None] == [3, 6]
    best = max(p.val_iou for p in progress if p.val_iou is not None)
    assert progress[-1].best_iou == best
    assert 0.0 <= best <= 1.0
    info = load_model(tmp_path / "run" / "best", device="cpu").info
    assert info["best_val_iou"] == best


def test_resume_after_a_pause_equals_an_uninterrupted_run(sample, tiny_spec, tmp_path):
    image, mask = sample
    whole, ref = _run(image, mask, tiny_spec, out_dir=tmp_path / "whole")
    first, _ = _run(image, mask, tiny_spec, out_dir=tmp_path / "paused", max_seconds=0)
    assert [p.step for p in first] == [1]  # paused after the first step
    assert not first[-1].done
    assert not (tmp_path / "paused" / "last").exists()
    assert torch.load(tmp_path / "paused" / CHECKPOINT, weights_only=False)["step"] == 1
    # resuming ignores the fresh initial weights: everything comes from the checkpoint
    rest, resumed = _run(image, mask, tiny_spec, out_dir=tmp_path / "paused", resume=True, seed=99)
    assert [p.step for p in rest] == list(range(2, 7))
    assert rest[-1].done
    _assert_same_weights(resumed.net, ref.net)
    assert [p.loss for p in first + rest] == [p.loss for p in whole]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(sample, tiny_spec, tmp_path):
    image, mask = sample
    cfg = dataclasses.replace(SMALL, checkpoint_every=1)
    _, ref = _run(image, mask, tiny_spec, cfg)
    torch.manual_seed(0)
    gen = iter_train(image, mask, spec=tiny_spec, config=cfg, device="cpu", out_dir=tmp_path / "run")
    for p in gen:
        if p.step == 3:
            break
    gen.close()  # as if the process had been killed after step 3's checkpoint
    rest, resumed = _run(image, mask, tiny_spec, cfg, out_dir=tmp_path / "run", resume=True, seed=7)
    assert [p.step for p in rest] == [4, 5, 6]
    _assert_same_weights(resumed.net, ref.net)


def test_resume_with_other_settings_is_refused(sample, tiny_spec, tmp_path):
    image, mask = sample
    _run(image, mask, tiny_spec, out_dir=tmp_path / "run", max_seconds=0)
    with pytest.raises(TrainingError, match="written with other settings"):
        _run(image, mask, tiny_spec, dataclasses.replace(SMALL, lr=1e-3), out_dir=tmp_path / "run", resume=True)


def test_fine_tuning_starts_from_the_base_weights(sample, tiny_spec, tiny_model_dir):
    image, mask = sample
    base = load_model(tiny_model_dir, device="cpu")
    torch.manual_seed(1)  # a network built from scratch now would differ from the base
    scratch = build_model(tiny_spec)
    assert any(not torch.equal(a, b) for a, b in zip(scratch.parameters(), base.net.parameters(), strict=True))
    # a learning rate of 1e-9: one step moves no parameter by more than about that
    cfg = dataclasses.replace(SMALL, steps=1, lr=1e-9)
    spec_ignored = dataclasses.replace(tiny_spec, threshold=0.3)
    _, tuned = _run(image, mask, spec_ignored, cfg, seed=1, base=tiny_model_dir)
    assert tuned.spec == base.spec  # the base's spec, not the one passed
    for (name, a), b in zip(tuned.net.named_parameters(), base.net.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-7), name


def test_fine_tuning_records_its_base(sample, tiny_model_dir, tmp_path):
    image, mask = sample
    _run(image, mask, None, dataclasses.replace(SMALL, steps=2), base=tiny_model_dir, out_dir=tmp_path / "ft")
    assert load_model(tmp_path / "ft" / "last", device="cpu").info["base_model"] == "tiny-v1"


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_do_not_change_the_loss(rng, name):
    loss_fn = make_loss(name)
    target = torch.from_numpy(rng.choice([0.0, 1.0, float(IGNORE)], size=(2, 1, 32, 32)).astype(np.float32))
    ignored = target == IGNORE
    logits = torch.from_numpy(rng.normal(0, 2, (2, 1, 32, 32)).astype(np.float32))
    base = loss_fn(logits, target)
    changed = logits.clone()
    changed[ignored] = torch.from_numpy(rng.normal(0, 50, int(ignored.sum())).astype(np.float32))
    assert torch.equal(loss_fn(changed, target), base)
    elsewhere = logits.clone()
    elsewhere[~ignored] += 1.0
    assert not torch.equal(loss_fn(elsewhere, target), base)  # the check can see a change
    grad_logits = logits.clone().requires_grad_(True)
    loss_fn(grad_logits, target).backward()
    assert (grad_logits.grad[ignored] == 0).all()
    assert (grad_logits.grad[~ignored] != 0).any()


def test_prepare_binarises_masks_and_keeps_ignore():
    image = np.zeros((2, 16, 16), np.uint8)
    mask = np.zeros((2, 16, 16), np.uint8)
    mask[0, :4] = 3
    mask[0, 4:8] = 254
    mask[1] = IGNORE
    ims, mks = prepare(image, mask)
    assert len(ims) == len(mks) == 2
    assert ims[0].dtype == np.float32
    assert set(np.unique(mks[0])) == {0, 1}
    assert (mks[0][:8] == 1).all()
    assert (mks[1] == IGNORE).all()
    with pytest.raises(TrainingError, match="every mask pixel is marked as ignored"):
        prepare(image, np.full_like(mask, IGNORE))
    with pytest.raises(TrainingError, match="differ in shape"):
        prepare(image, mask[:1])
    with pytest.raises(TrainingError, match="image: .*too small"):
        prepare(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


def test_split_validation_holds_out_the_last_block():
    image = np.arange(10)[:, None, None] * np.ones((10, 8, 8), np.uint8)
    tr, trm, va, vam = split_validation(image, image, 0.2)
    assert [int(s[0, 0]) for s in tr] == list(range(8))
    assert [int(s[0, 0]) for s in va] == [8, 9]
    assert split_validation(image, image, 0.0)[2] == []
    with pytest.raises(TrainingError, match="leaves no training slice"):
        split_validation(image, image, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"augment": "heavy"}, "augment must be one of full, strong, basic"),
     ({"loss": "focal"}, "loss must be one of dice_bce, lovasz_bce"), ({"tile": 100}, "multiple of 32"),
     ({"steps": 0}, ">= 1")],
)
def test_train_config_validation(kwargs, message):
    with pytest.raises(TrainingError, match=message):
        TrainConfig(**kwargs)


def test_train_returns_the_model(sample, tiny_spec):
    image, mask = sample
    torch.manual_seed(0)
    model = train(image, mask, spec=tiny_spec, config=dataclasses.replace(SMALL, steps=2), device="cpu")
    assert model.spec == tiny_spec
    assert not model.net.training


def test_hard_example_crops_are_centred_on_the_model_errors(rng):
    from napari_mitoseg.training import CropSampler

    image = rng.random((1, 400, 400)).astype(np.float32)
    mask = np.zeros((1, 400, 400), np.uint8)
    mask[0, 300:310, 40:50] = 1  # the only error the "model" makes: a missed mitochondrion
    base = TrainConfig(batch_size=16, tile=32, scale_range=(1.0, 1.0), foreground_fraction=0.0,
                       hard_fraction=0.0)
    plain = CropSampler(list(image), list(mask), base)
    hard = CropSampler(list(image), list(mask), dataclasses.replace(base, hard_fraction=1.0))
    hard.hard = [np.flatnonzero(mask[0].ravel())]
    plain.hard = hard.hard
    with_fg = lambda s: sum(int((y > 0).any()) for y in s.sample(0)[1])  # noqa: E731
    assert with_fg(hard) == 16
    assert with_fg(plain) <= 4


def test_set_hard_collects_the_wrong_pixels(sample, tiny_model):
    from napari_mitoseg.inference import predict_slice
    from napari_mitoseg.training import CropSampler

    image, mask = sample
    ims, mks = prepare(image, mask)
    mks[0][:5] = IGNORE
    sampler = CropSampler(ims, mks, TrainConfig(tile=64))
    total = sampler.set_hard(tiny_model)
    for im, m, h in zip(ims, mks, sampler.hard, strict=True):
        wrong = ((predict_slice(tiny_model, im) > tiny_model.spec.threshold) != (m == 1)) & (m != IGNORE)
        np.testing.assert_array_equal(h, np.flatnonzero(wrong.ravel()))
    assert total == sum(len(h) for h in sampler.hard) > 0


def test_resume_with_hard_example_mining_is_exact(sample, tiny_spec, tmp_path):
    image, mask = sample
    cfg = dataclasses.replace(SMALL, checkpoint_every=1, hard_fraction=0.5, hard_every=2)
    _, ref = _run(image, mask, tiny_spec, cfg)
    gen = iter_train(image, mask, spec=tiny_spec, config=cfg, device="cpu", out_dir=tmp_path / "run")
    for p in gen:
        if p.step == 3:
            break
    gen.close()
    assert any(len(h) for h in torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["hard"])
    rest, resumed = _run(image, mask, tiny_spec, cfg, out_dir=tmp_path / "run", resume=True, seed=7)
    assert [p.step for p in rest] == [4, 5, 6]
    _assert_same_weights(resumed.net, ref.net)


def test_initial_weights_follow_the_seed(sample, tiny_spec):
    image, mask = sample
    one = dataclasses.replace(SMALL, steps=1)
    _, a = _run(image, mask, tiny_spec, one, seed=1)  # the global torch seed does not matter
    _, b = _run(image, mask, tiny_spec, one, seed=2)
    _assert_same_weights(a.net, b.net)
    _, c = _run(image, mask, tiny_spec, dataclasses.replace(one, seed=5))
    assert not torch.equal(a.net.state_dict()["segmentation_head.0.weight"],
                           c.net.state_dict()["segmentation_head.0.weight"])


def test_inverted_sampler_gives_the_same_crops_with_reversed_contrast(sample):
    from napari_mitoseg.training import CropSampler

    image, mask = sample
    ims, mks = prepare(image, mask)
    cfg = TrainConfig(batch_size=4, tile=64, augment="basic")
    plain, inverted = CropSampler(ims, mks, cfg), CropSampler(ims, mks, cfg, invert=True)
    plain.intensity = inverted.intensity = lambda t: t  # brightness jitter is not symmetric
    (x, y), (xi, yi) = plain.sample(3), inverted.sample(3)
    torch_testing = __import__("torch").testing
    torch_testing.assert_close(xi, -x)
    torch_testing.assert_close(yi, y)


# --------------------------------------------------------------------------- several volumes


def test_volume_weights_draw_each_volume_equally_often():
    big = [np.ones((8, 8), np.uint8)] * 10
    small = [np.ones((8, 8), np.uint8), np.full((8, 8), IGNORE, np.uint8)]
    small[1][:2] = 1  # 16 labelled pixels against 64
    w = volume_weights(big + small, [10, 2])
    assert w.sum() == pytest.approx(1.0)
    assert w[:10].sum() == pytest.approx(0.5) and w[10:].sum() == pytest.approx(0.5)
    assert w[10] == pytest.approx(4 * w[11])  # by labelled pixels within a volume


def test_crops_of_a_coarser_volume_cover_fewer_of_its_pixels():
    ims = [np.zeros((300, 300), np.float32)] * 2
    mks = [np.ones((300, 300), np.uint8)] * 2
    sampler = CropSampler(ims, mks, TrainConfig(tile=64), input_scale=0.5, ratios=[1.0, 2.0])
    # the same tissue at twice the pixel size: half as many pixels make one tile
    assert sampler.crop_size(0) == 128 and sampler.crop_size(1) == 64


def test_a_crop_wider_than_its_slice_is_padded_not_stretched():
    # a side view of a thin stack: 12 planes deep, far less than one crop
    im = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (12, 1))
    sampler = CropSampler([im], [np.ones((12, 300), np.uint8)], TrainConfig(tile=64, augment="basic"))
    _, ys = sampler.sample(0)
    y = ys.numpy()
    assert y.shape == (8, 1, 64, 64)
    # each tile holds the plane at its own aspect ratio: 12 of 64 rows (or columns, when
    # rotated) labelled, the rest unlabelled padding
    for t in y[:, 0]:
        assert set(np.unique(t)) == {1, IGNORE}
        band = min(np.count_nonzero((t == 1).any(axis=1)), np.count_nonzero((t == 1).any(axis=0)))
        assert 10 <= band <= 14


def test_ortho_planes_are_the_side_views_the_ortho_passes_read(rng):
    from napari_mitoseg.training import ortho_planes

    image = rng.integers(0, 255, (5, 6, 7), dtype=np.uint8)
    mask = (image > 128).astype(np.uint8)
    deep, deep_mask = np.concatenate([image, image]), np.concatenate([mask, mask])
    ims, mks = ortho_planes(deep, deep_mask, stride=2)
    assert len(ims) == len(mks) == 3 + 4  # rows 0, 2, 4 and columns 0, 2, 4, 6
    np.testing.assert_array_equal(ims[1], deep[:, 2, :])
    np.testing.assert_array_equal(ims[3], deep[:, :, 0])
    np.testing.assert_array_equal(mks[6], deep_mask[:, :, 6])
    assert [i.shape for i in ims] == [(10, 7)] * 3 + [(10, 6)] * 4
    with pytest.raises(TrainingError, match="at least 8 training slices in z, got 5"):
        ortho_planes(image, mask)


def test_training_on_slices_of_several_shapes(tiny_spec, tmp_path):
    from napari_mitoseg.synthetic import make_sample
    from napari_mitoseg.training import Volume, iter_train_volumes, ortho_planes

    image, gt = make_sample((10, 48, 56), seed=2)
    side_i, side_m = ortho_planes(image, gt)
    vol = Volume([*image, *side_i], [*gt, *side_m], pixel_ratio=1.0)
    cfg = TrainConfig(tile=64, batch_size=2, steps=2, val_every=0, hard_fraction=0.5, hard_every=1)
    *_, last = iter_train_volumes([vol], spec=tiny_spec, config=cfg, out_dir=tmp_path / "run", device="cpu")
    assert last.step == 2 and np.isfinite(last.loss)


def test_em_artefacts_mark_blotted_out_pixels_unlabelled():
    im = torch.full((1, 32, 32), 0.5)
    seen = 0
    for seed in range(400):
        out, mk = em_artefacts(im, torch.ones((1, 32, 32)), np.random.default_rng(seed))
        assert out.shape == im.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        hidden = mk == IGNORE
        if hidden.any():
            seen += 1
            assert torch.unique(out[hidden]).numel() == 1  # one flat dark or bright blot
    assert seen > 0


def test_training_on_two_volumes_validates_each(tiny_spec, tmp_path):
    from napari_mitoseg.synthetic import make_sample

    a_im, a_mk = make_sample(shape=(4, 96, 96), seed=1)
    b_im, b_mk = make_sample(shape=(3, 64, 64), seed=2)
    vols = [Volume(a_im[:3], a_mk[:3], a_im[3:], a_mk[3:], name="a"),
            Volume(b_im[:2], b_mk[:2], b_im[2:], b_mk[2:], pixel_ratio=1.5, name="b")]
    cfg = dataclasses.replace(SMALL, steps=2, val_every=2)
    gen = iter_train_volumes(vols, spec=tiny_spec, config=cfg, device="cpu", out_dir=tmp_path / "run")
    progress = list(gen)
    rec = progress[-1].history[-1]
    assert set(rec["val_iou_by_volume"]) == {"a", "b"}
    assert rec["val_iou"] == pytest.approx(np.mean(list(rec["val_iou_by_volume"].values())))
    with pytest.raises(TrainingError, match="validation images and masks together"):
        next(iter_train_volumes([Volume(a_im, a_mk, val_images=a_im)], spec=tiny_spec, config=cfg))


def test_respec_changes_what_the_weights_do_not_fix(tiny_spec):
    out = respec(tiny_spec, {"pixel_size_nm": 5.0, "threshold": 0.4})
    assert out.pixel_size_nm == 5.0 and out.threshold == 0.4 and out.encoder == tiny_spec.encoder
    with pytest.raises(TrainingError, match="fix encoder"):
        respec(tiny_spec, {"encoder": "resnet34"})


def test_training_steps_run_in_float32_even_where_inference_takes_bfloat16(sample, tiny_spec, monkeypatch):
    monkeypatch.setenv("MITOSEG_PRECISION", "bfloat16")  # inference would run in bfloat16 here
    seen = []

    def record(module, _args):
        if module.training:
            seen.append(torch.is_autocast_cpu_enabled())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        _run(*sample, tiny_spec, dataclasses.replace(SMALL, steps=2))
    finally:
        handle.remove()
    assert seen and not any(seen)
