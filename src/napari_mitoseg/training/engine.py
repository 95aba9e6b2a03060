"""The training loop: one engine for the shipped model and for the user's corrections.

:func:`iter_train_volumes` reads as its steps: prepare the volumes, start the network (new or
from a base), build the crop sampler, set up the optimiser (going on from a checkpoint when
resuming), then step, validate and checkpoint until done or paused.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..inference import for_stack, normalise01, predict_slice
from ..metrics import Counts, counts, scores_from_counts
from ..model import LoadedModel, ModelSpec, build_model, load_model, resolve_device
from ..precision import autocast
from .adapt import adapt_batchnorm, param_groups, pseudo_masks, set_train_mode, spread
from .checkpoints import (
    CHECKPOINT,
    check_run_dir,
    lock_run_dir,
    read_checkpoint,
    save_run_model,
    unlock,
    write_checkpoint,
)
from .config import AUTO, IGNORE, NOTE, TrainConfig, TrainingError, TrainProgress
from .loss import make_loss
from .sampling import CropSampler
from .threads import ThreadChoice, check_thread_setting
from .volumes import (
    Volume,
    _as_slices,
    _check_has_mitochondria,
    _read_masks,
    check_not_a_mask,
    prepare,
    volume_weights,
)

logger = logging.getLogger(__name__)

def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def validate(model: LoadedModel, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Foreground IoU of ``model`` (threshold from its spec) over whole raw slices."""
    total = Counts(0, 0, 0, 0)
    for im, m in zip(images, masks, strict=True):
        m = np.asarray(m)
        pred = predict_slice(model, im) > model.spec.threshold
        total = total + counts(pred, m == 1, ignore=(m == IGNORE))
    return scores_from_counts(total).iou


@dataclass
class _Data:
    """The training volumes' slices side by side: ``images`` / ``masks`` (as :func:`prepare`
    gives them), each slice's pixel ``ratios``, the slices ``per_volume`` and the validation
    sets ``vals`` as (name, pixel ratio, images, masks); ``unlabelled`` (raw slices, pixel
    ratios): the unlabelled slices kept for adapting to the stack (none unless the
    configuration uses them)."""

    images: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    ratios: list = field(default_factory=list)
    per_volume: list = field(default_factory=list)
    vals: list = field(default_factory=list)
    unlabelled: tuple = field(default_factory=lambda: ([], []))


def _prepare_volumes(volumes: Sequence[Volume], cfg: TrainConfig) -> _Data:
    data = _Data()
    for k, vol in enumerate(volumes):
        name = vol.name or f"volume {k + 1}"
        if any(name == v[0] for v in data.vals):
            name = f"{name} #{k + 1}"
        v_ims, v_mks = prepare(vol.images, vol.masks)
        data.images += v_ims
        data.masks += v_mks
        data.ratios += [float(vol.pixel_ratio)] * len(v_ims)
        data.per_volume.append(len(v_ims))
        if vol.val_images is not None:  # with its masks: _read_masks checked that
            data.vals.append((name, vol.pixel_ratio, *_validation_pair(vol, name)))
        if vol.unlabelled is not None and cfg.uses_stack:
            stack = _as_slices(vol.unlabelled, f"{name} unlabelled slices")
            picked = [stack[i] for i in spread(range(len(stack)), cfg.stack_slices)]
            data.unlabelled[0].extend(picked)
            data.unlabelled[1].extend([float(vol.pixel_ratio)] * len(picked))
    return data


def _validation_pair(vol: Volume, name: str) -> tuple[list, list]:
    """A volume's validation slices (images, masks), checked to match before any step runs."""
    v_ims = _as_slices(vol.val_images, f"{name} validation image")
    v_mks = _as_slices(vol.val_masks, f"{name} validation mask")
    if len(v_ims) != len(v_mks) or any(i.shape != m.shape for i, m in zip(v_ims, v_mks, strict=False)):
        raise TrainingError(f"{name}: the validation image and mask differ in shape: "
                            f"{np.shape(vol.val_images)} vs {np.shape(vol.val_masks)}")
    check_not_a_mask(vol.val_images, f"{name}: the validation image")
    return v_ims, v_mks


def _start_network(base, spec: ModelSpec | None, cfg: TrainConfig):
    """(net on the CPU, spec, provenance): ``base``'s network and spec, or a new network of
    ``spec`` with weights seeded by ``cfg.seed``."""
    import torch

    if base is None:
        spec = spec or ModelSpec()
        torch.manual_seed(cfg.seed)  # reproducible initial weights
        return build_model(spec), spec, {}
    if isinstance(base, LoadedModel):  # e.g. a model set up for a stack (for_stack)
        based = dataclasses.replace(base, net=copy.deepcopy(base.net).cpu())
    else:
        based = load_model(base, device="cpu")
    # a spec passed with a base is ignored (see respec to change one)
    return based.net.to(memory_format=torch.contiguous_format), based.spec, {"base_model": based.name}


@dataclass
class _Run:
    """A training run in progress: what a checkpoint saves, and what a step needs."""

    cfg: TrainConfig
    spec: ModelSpec
    net: object
    opt: object
    sched: object
    sampler: CropSampler
    dev: object
    out: Path | None
    meta: dict
    step: int = 0
    best: float = -1.0
    history: list = field(default_factory=list)
    #: the step of the last checkpoint written or resumed from
    checkpointed: int | None = None
    #: (raw slices, pixel ratios) without labels, and their weak labels once made (self-training)
    unlabelled: tuple = ((), ())
    pseudo: list | None = None

    @property
    def model(self) -> LoadedModel:
        return LoadedModel(net=self.net, spec=self.spec, name=self.out.name if self.out else "training")

    def state(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": self.step, "best": self.best,
                "history": self.history, "config": dataclasses.asdict(self.cfg),
                "spec": self.spec.to_dict(), "hard": [h.astype(np.int32) for h in self.sampler.hard],
                "pseudo": self.pseudo}

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.checkpointed = self.step
        if state.get("pseudo") is not None:
            use_pseudo(self, state["pseudo"])
        self.sampler.hard = [np.asarray(h, np.int64) for h in state.get("hard", self.sampler.hard)]


def _set_up(net, spec: ModelSpec, cfg: TrainConfig, sampler: CropSampler, dev, out, resume: bool,
            meta: dict, unlabelled: tuple = ((), ())) -> _Run:
    """The network on ``dev`` with its optimiser and schedule, gone on from ``out``'s checkpoint
    when ``resume``; ``unlabelled`` as :class:`_Data` holds it."""
    import torch

    net = net.to(dev)
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(net, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    run = _Run(cfg, spec, net, opt, sched, sampler, dev, out, meta, unlabelled=unlabelled)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        state = read_checkpoint(out, cfg, spec, dev) if resume else None
        if state is not None:
            run.restore(state)
            logger.info("resumed %s at step %d", out / CHECKPOINT, run.step)
    return run


def _check_finite(run: _Run) -> None:
    """:class:`TrainingError` when a weight of the network is NaN or infinite: such a model
    segments nothing, and is never saved."""
    bad = [k for k, v in run.net.state_dict().items() if v.is_floating_point() and not _finite(v)]
    if bad:
        raise _diverged(run, f"weights became NaN or infinite at step {run.step} ({bad[0]})")


def _finite(v) -> bool:
    """Whether every value of tensor ``v`` is finite; on the CPU through numpy, which needs no
    torch threads (on a busy machine torch's threads made this check take seconds)."""
    import torch

    v = v.detach()
    if v.device.type != "cpu":
        return bool(torch.isfinite(v).all())
    return bool(np.isfinite((v.float() if v.dtype == torch.bfloat16 else v).numpy()).all())


def _diverged(run: _Run, what: str) -> TrainingError:
    kept = "" if run.checkpointed is None else \
        f"; the last good checkpoint (step {run.checkpointed}) stays in {run.out}"
    return TrainingError(f"training diverged: {what} (learning rate {run.cfg.lr:g}: try a smaller "
                         f"one); nothing from this step on was saved{kept}")


def _snapshot(run: _Run, kind: str) -> None:
    _check_finite(run)
    if run.out is not None:
        info = {**run.meta, "step": run.step, "steps": run.cfg.steps, "best_val_iou": run.best}
        save_run_model(run.out, kind, run.net, run.spec, info, run.cfg, run.history)


def _checkpoint(run: _Run) -> None:
    if run.out is not None:
        _check_finite(run)
        write_checkpoint(run.out, run.state())
        run.checkpointed = run.step


def _follow_load(run: _Run, choice: ThreadChoice) -> None:
    """Torch's threads as the machine's other work leaves cores free (see :mod:`.threads`)."""
    import torch

    threads = choice.update(run.step, torch.get_num_threads())
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def _refresh_hard(run: _Run) -> None:
    """Every ``hard_every`` steps, the sampler's hard-example pools from the model's errors."""
    cfg = run.cfg
    if cfg.hard_fraction > 0 and run.step > 0 and run.step % cfg.hard_every == 0:
        # a checkpoint holds the pool in use after its step, so a resumed run refreshes
        # exactly where an uninterrupted one does, from the same weights
        run.net.eval()
        n_hard = run.sampler.set_hard(run.model)
        logger.info("step %d: %d hard pixels", run.step, n_hard)


def use_pseudo(run: _Run, masks: list) -> None:
    """The unlabelled slices with their weak labels ``masks`` join the crops drawn."""
    ims, ratios = run.unlabelled
    run.pseudo = masks
    run.sampler.add_slices([normalise01(i) for i in ims], masks, ratios, run.cfg.pseudo_fraction)


def _label_unlabelled(run: _Run) -> None:
    """Self-training: from ``cfg.pseudo_step`` on, the unlabelled slices, labelled where the
    model (as it is then) is confident, share the crops."""
    cfg = run.cfg
    if cfg.pseudo_fraction == 0 or run.pseudo is not None or run.step < cfg.pseudo_step:
        return
    if not run.unlabelled[0]:
        logger.info("self-training skipped: no unlabelled slices of the stack were given (the "
                    "fine-tune widget and api.iter_finetune give the uncorrected ones)", extra=NOTE)
        run.pseudo = []
        return
    masks = pseudo_masks(run.model, *run.unlabelled, cfg.pseudo_confidence)
    use_pseudo(run, masks)
    logger.info("step %d: %d unlabelled slices labelled, %.0f %% of their pixels", run.step, len(masks),
                100 * np.mean([(m != IGNORE).mean() for m in masks]))


def _one_step(run: _Run, loss_fn) -> float:
    """One optimiser step on a fresh batch of crops; returns the loss."""
    import torch

    net, dev = run.net, run.dev
    set_train_mode(net, run.cfg)
    x, y = run.sampler.sample(run.step)
    x, y = x.to(dev), y.to(dev)
    if dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(dev, torch.bfloat16, cpu=False):  # float32 on a CPU: bfloat16 cost fine-tunes IoU
        logits = net(x)
    loss = loss_fn(logits.float(), y)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.sched.step()
    run.step += 1
    return float(loss.detach())


def _validate(run: _Run, vals: list, rec: dict) -> float:
    """Validation IoU (the mean over the volumes), recorded in ``rec``; a new best is saved."""
    run.net.eval()
    model = run.model
    by_volume = {name: validate(for_stack(model, ratio), v_i, v_m) for name, ratio, v_i, v_m in vals}
    val_iou = float(np.mean(list(by_volume.values())))
    rec["val_iou"] = val_iou
    if len(by_volume) > 1:
        rec["val_iou_by_volume"] = by_volume
    if val_iou > run.best:
        run.best = val_iou
        _snapshot(run, "best")
    return val_iou


def iter_train(images, masks, *, val_images=None, val_masks=None, unlabelled=None,
               **kwargs) -> Iterator[TrainProgress]:
    """Train (or fine-tune from ``base``) on raw (Z, Y, X) images and masks, yielding progress.

    One volume (``unlabelled``: its slices without labels, see :class:`Volume`); see
    :func:`iter_train_volumes` for the keywords and for several volumes.
    The generator's final value (``StopIteration.value``) is the trained :class:`LoadedModel`.
    """
    vol = Volume(images, masks, val_images, val_masks, unlabelled=unlabelled)
    return (yield from iter_train_volumes([vol], **kwargs))


def iter_train_volumes(
    volumes: Sequence[Volume],
    *,
    spec: ModelSpec | None = None,
    config: TrainConfig | None = None,
    base: str | os.PathLike | LoadedModel | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    max_seconds: float | None = None,
    device: str = "auto",
    info: dict | None = None,
    ignore_value: int | str | None = AUTO,
) -> Iterator[TrainProgress]:
    """Train (or fine-tune from ``base``) on one or more :class:`Volume`, yielding progress.

    Each volume is drawn from equally often, whatever its size. Validation IoU is the mean
    over the volumes that have validation slices (each volume's own IoU is in the history).
    Writes ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps, ``out_dir/best`` (the
    best model by validation IoU, or the last one without validation) and ``out_dir/last``.
    ``max_seconds`` pauses the run (checkpoint saved) so it can go on with ``resume=True``.
    The generator's final value (``StopIteration.value``) is the trained :class:`LoadedModel`.
    ``out_dir`` holding a run is refused unless ``resume`` (see :func:`check_run_dir`).
    Masks are read with ``ignore_value`` (see :func:`training_masks`); masks without any
    mitochondrion are refused when training from scratch.
    """
    if not volumes:
        raise TrainingError("no training volume given")
    cfg = config or TrainConfig()
    check_thread_setting()
    if out_dir is not None:
        check_run_dir(out_dir, resume)
    volumes = [_read_masks(vol, k, ignore_value) for k, vol in enumerate(volumes)]
    _check_has_mitochondria([vol.masks for vol in volumes], base is None)
    dev = resolve_device(device)
    t_start = time.perf_counter()
    net, spec, base_info = _start_network(base, spec, cfg)
    data = _prepare_volumes(volumes, cfg)
    sampler = CropSampler(data.images, data.masks, cfg, spec.input_scale, spec.invert, ratios=data.ratios,
                          weights=None if len(volumes) == 1 else volume_weights(data.masks, data.per_volume))
    out = Path(out_dir) if out_dir is not None else None
    lock = lock_run_dir(out) if out is not None else None
    try:
        run = _set_up(net, spec, cfg, sampler, dev, out, resume, {**(info or {}), **base_info},
                      data.unlabelled)
        if cfg.bn == "stack" and run.checkpointed is None:
            adapt_batchnorm(run.net, spec, data.images + data.unlabelled[0],
                            data.ratios + data.unlabelled[1], dev)
        yield from _loop(run, data.vals, t_start, max_seconds)
        _finish(run, have_val=bool(data.vals))
    finally:
        if lock is not None:
            unlock(lock)
    return run.model


def _finish(run: _Run, have_val: bool) -> None:
    """The network in eval mode, checked finite; at the last step saved as ``last`` (and as
    ``best`` when there was no validation)."""
    run.net.eval()
    _check_finite(run)
    if run.step == run.cfg.steps:
        _snapshot(run, "last")
        if not have_val:
            _snapshot(run, "best")


def _loop(run: _Run, vals: list, t_start: float, max_seconds: float | None) -> Iterator[TrainProgress]:
    """Step, validate and checkpoint until the last step, or until ``max_seconds`` pass."""
    import torch

    cfg = run.cfg
    loss_fn = make_loss(cfg.loss)
    threads_before = torch.get_num_threads()
    choice = ThreadChoice()
    choice.start(run.dev.type == "cpu")
    try:
        t_chunk = time.perf_counter()
        while run.step < cfg.steps:
            _refresh_hard(run)
            _label_unlabelled(run)
            _follow_load(run, choice)
            loss = _one_step(run, loss_fn)
            if not math.isfinite(loss):
                raise _diverged(run, f"the loss became {loss} at step {run.step}")
            now = time.perf_counter()
            rec = {"step": run.step, "loss": loss, "seconds": now - t_chunk, "threads": torch.get_num_threads()}
            t_chunk = now
            last = run.step == cfg.steps
            val_iou = None
            if vals and ((cfg.val_every and run.step % cfg.val_every == 0) or last):
                val_iou = _validate(run, vals, rec)
            run.history.append(rec)
            if last or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0):
                _checkpoint(run)
            paused = max_seconds is not None and now - t_start > max_seconds and not last
            yield TrainProgress(run.step, cfg.steps, loss, now - t_start, val_iou,
                                run.best if run.best >= 0 else None, done=last, history=run.history)
            if paused:
                _checkpoint(run)
                logger.info("paused at step %d of %d; continue with resume", run.step, cfg.steps)
                break
    finally:
        torch.set_num_threads(threads_before)


def train(images, masks, **kwargs) -> LoadedModel:
    """Run :func:`iter_train` to the end and return the trained model."""
    from .._generators import result_of

    return result_of(iter_train(images, masks, **kwargs))
