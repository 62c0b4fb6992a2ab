"""SimCLR pretraining on all images of a dataset; labels are used only by the kNN monitor.

    python -m simclr_ad.pretrain [--config configs/X.yaml] [--data-dir DIR] [--out RUN_DIR] ...

Defaults (configs/pretrain_resnet50.yaml): ResNet50, 128 px grayscale, lightly NT-Xent
(t=0.5) and projection head, SGD(lr 1e-2, momentum 0.9) wrapped in ASAM (rho 2),
cosine schedule with warmup, 100 epochs. Re-running the same command resumes.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from tqdm import tqdm

from simclr_ad import augment, checkpoint, data, evaluate, fileio, grouping, losses, optim, rundir, runs, runtime, splits
from simclr_ad.config import PretrainConfig, config_to_dict, parse_config
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.models import SimCLRModel, build_backbone, init_backbone
from simclr_ad.runlog import RunLog


class NonFiniteLoss(UserError):
    pass


def simclr_step(model, x0: torch.Tensor, x1: torch.Tensor, loss_fn, optimizer, rt: runtime.Runtime,
                where: str) -> torch.Tensor:
    """One optimisation step on a pair of views; with SAM, both passes use these same views.

    With LookSAM (``sam_every`` > 1) the steps between perturbations take one pass only.
    Raises NonFiniteLoss before touching the weights if the loss is nan/inf.
    """
    sam = optimizer if isinstance(optimizer, optim.SAM) else None
    two_passes = sam is not None and sam.perturbs_this_step

    def loss_at_current_weights() -> torch.Tensor:
        with rt.autocast():
            z0, z1 = model(torch.cat([x0, x1])).chunk(2)
        return loss_fn(z0.float(), z1.float())

    # SAM's first pass is local; LookSAM's is synced, so every rank keeps the same g_v
    with runtime.maybe_no_sync(model, two_passes and rt.distributed and sam.every == 1):
        loss = loss_at_current_weights()
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at {where}; stopped before updating the "
                                "weights, the last checkpoint is intact (try a lower --lr)")
        loss.backward()
    if sam is not None and not two_passes:
        sam.reuse_step(zero_grad=True)  # LookSAM between perturbations
        return loss.detach()
    if sam is None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    optimizer.first_step(zero_grad=True)
    with optim.frozen_bn_stats(model):  # running BN stats update once per step, not twice
        loss_at_current_weights().backward()
    optimizer.second_step(zero_grad=True)
    return loss.detach()


def subject_partners(index: torch.Tensor, groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each pool index, another member of its group drawn uniformly (itself if it is alone).

    Args:
        index: int64 [B] indices into the pool.
        groups: int64 [N] group id (0..G-1) of every pool image.
        generator: CPU generator; one uniform draw per index.
    Returns:
        int64 [B] partner indices.
    """
    order = torch.argsort(groups, stable=True)
    count = torch.bincount(groups)
    start = torch.cumsum(count, 0) - count
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    group, own = groups[index], position[index] - start[groups[index]]
    size = count[group]
    draw = (torch.rand(len(index), generator=generator) * (size - 1).clamp(min=1)).long()  # 0..size-2
    draw = torch.where(size > 1, draw + (draw >= own).long(), own)  # skip itself
    return order[start[group] + draw]


def train_one_epoch(model, images: torch.Tensor, batches: list[torch.Tensor], cfg: PretrainConfig,
                    rt: runtime.Runtime, optimizer, scheduler, loss_fn, generator: torch.Generator,
                    epoch: int, start_batch: int = 0, on_step=None, log: RunLog | None = None,
                    groups: torch.Tensor | None = None) -> dict:
    """Train over this rank's ``batches``; returns the epoch's averages.

    ``groups`` (a group id per pool image) serves cfg.positives == "subject", where each image's
    positive is a view of another slice of its group rather than a second view of itself, and
    cfg.negatives == "other_subjects", where its group-mates are no negatives.
    """
    model.train()
    total_loss, n_steps, n_images = 0.0, 0, 0
    bar = tqdm(total=len(batches), initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               unit="step", disable=not (cfg.progress and rt.is_main), leave=False, dynamic_ncols=True)
    started = time.perf_counter()
    for i in range(start_batch, len(batches)):
        batch = images[batches[i]].to(rt.device, non_blocking=True)
        partners = None if cfg.positives == "views" else \
            images[subject_partners(batches[i], groups, generator)].to(rt.device, non_blocking=True)
        x0, x1 = augment.two_views(batch, cfg.image_size, cfg, generator, partners)
        if log is not None and epoch == 0 and i == 0 and log.writer is not None:
            pairs = torch.stack([x0[:8], x1[:8]], dim=1).flatten(0, 1).float() * augment.STD + augment.MEAN
            log.writer.add_image("views/pairs", torchvision.utils.make_grid(pairs.clamp(0, 1).cpu(), nrow=8), 0)
        step_loss = loss_fn if cfg.negatives == "all" else functools.partial(loss_fn, groups=groups[batches[i]])
        loss = simclr_step(model, rt.to_input(x0), rt.to_input(x1), step_loss, optimizer, rt,
                           where=f"epoch {epoch + 1}, step {scheduler.last_epoch + 1}")
        scheduler.step()
        total_loss += float(loss)
        n_steps += 1
        n_images += len(batch) * rt.world_size
        rate = n_images / (time.perf_counter() - started)
        bar.set_postfix(loss=f"{total_loss / n_steps:.4f}", img_s=f"{rate:.1f}")
        bar.update(1)
        if on_step is not None:
            on_step(i + 1)
    bar.close()
    elapsed = time.perf_counter() - started
    return {"loss": runtime.all_reduce_mean(total_loss / max(1, n_steps), rt),
            "img_per_s": n_images / max(elapsed, 1e-9), "epoch_s": elapsed}


def build_optimizer(cfg: PretrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD, or SGD inside SAM; fused (one kernel over all parameters: 36 -> 14 ms a step for
    ResNet18 on 2 cores)."""
    groups = optim.param_groups_no_decay(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    return optim.SAM(groups, torch.optim.SGD, rho=cfg.sam_rho, adaptive=cfg.sam_adaptive, every=cfg.sam_every,
                     lr=cfg.lr, momentum=cfg.momentum, fused=True)


def export_encoder(model: SimCLRModel, run_dir: Path) -> None:
    """encoder.pt: the backbone's plain state_dict (loads strictly into models.build_backbone)."""
    checkpoint.save({k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()},
                    run_dir / "encoder.pt")


def log_embeddings(model, images: data.ImageSet, cfg: PretrainConfig, rt: runtime.Runtime, log: RunLog) -> None:
    """Embedding projector of (up to 1000) monitor images, with class names and thumbnails."""
    if log.writer is None or len(images) == 0:
        return
    pick = np.linspace(0, len(images) - 1, num=min(1000, len(images))).astype(int)
    feats = evaluate.embed(model.backbone, images.images[pick], cfg.image_size, rt)
    thumbs = torch.nn.functional.interpolate(images.images[pick].float() / 255, size=(32, 32))
    log.writer.add_embedding(feats, metadata=[images.classes[y] for y in images.labels[pick]],
                             label_img=thumbs, global_step=cfg.epochs, tag="encoder")


def build_pool(cfg: PretrainConfig, images: data.ImageSet, split: dict, rt: runtime.Runtime):
    """The pretraining pool (uint8 [N,1,H,W]), its group ids (None unless positives/negatives use
    subjects), and the kNN monitor's bank (train) and queries (val)."""
    train_idx = images.indices_of(split["train"])
    pretrain_idx = train_idx if cfg.pretrain_on == "train" else np.arange(len(images))
    pool = images.images[torch.from_numpy(pretrain_idx)]
    if rt.device.type == "cuda":
        pool = pool.to(rt.device)  # the uint8 cache is small: keep it next to the model
    groups = (torch.from_numpy(grouping.label_free_groups(images.subset(pretrain_idx)))
              if cfg.positives == "subject" or cfg.negatives == "other_subjects" else None)
    if len(pool) // (cfg.batch_size * rt.world_size) == 0:
        raise UserError(f"batch size {cfg.batch_size} x {rt.world_size} rank(s) exceeds the "
                        f"{len(pool)} pretraining images; lower --batch-size")
    return pool, groups, images.subset(train_idx), images.subset(images.indices_of(split["val"]))


def build_loss(cfg: PretrainConfig, rt: runtime.Runtime):
    """NT-Xent over the whole batch (gathered across ranks), or with the anchor's subject masked out."""
    if cfg.negatives == "all":
        return losses.nt_xent(cfg.temperature, distributed=rt.distributed)
    if rt.distributed:
        raise UserError("--negatives other_subjects is single-process for now (negatives are not gathered "
                        "across ranks); run without torchrun or with --negatives all")
    return functools.partial(losses.nt_xent_masked, temperature=cfg.temperature)


def build_scheduler(cfg: PretrainConfig, optimizer, batches_per_epoch: int):
    """Cosine with linear warmup, stepped once per optimisation step."""
    total_steps = batches_per_epoch * cfg.epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optim.base_optimizer(optimizer),
        lambda step: optim.cosine_with_warmup(step, total_steps, batches_per_epoch * cfg.warmup_epochs,
                                              cfg.min_lr_ratio))


def fit(model, core: SimCLRModel, pool: torch.Tensor, groups, monitor: tuple, n_classes: int, cfg: PretrainConfig,
        rt: runtime.Runtime, optimizer, scheduler, loss_fn, ckpt: dict | None, last: Path, log: RunLog) -> None:
    """Epochs from the checkpoint's on: kNN at initialisation, then train, log, save, per epoch."""
    start_epoch = ckpt["epoch"] if ckpt else 0
    start_batch = ckpt["extra"].get("batch_in_epoch", 0) if ckpt else 0
    monitor_bank, monitor_query = monitor

    def save(epoch: int, batch_in_epoch: int, generator: torch.Generator) -> None:
        if rt.is_main:
            checkpoint.save(checkpoint.make(
                core, optimizer, scheduler, epoch, scheduler.last_epoch, None,
                config_to_dict(cfg), cfg.arch,
                extra={"batch_in_epoch": batch_in_epoch, "aug_generator": generator.get_state()}), last)
            runs.remove_legacy_checkpoints(last.parent)

    def knn() -> dict:
        if not (cfg.knn_every and rt.is_main and len(monitor_query) and len(monitor_bank)):
            return {}
        return evaluate.knn_monitor(core.backbone, monitor_bank.images, monitor_bank.labels,
                                    monitor_query.images, monitor_query.labels, n_classes,
                                    cfg.image_size, rt, cfg.knn_k, cfg.knn_t)

    if start_epoch == 0 and start_batch == 0 and (at_init := knn()):
        log.log({"epoch": 0, **at_init}, step=0)  # the initialisation's kNN: what training must beat

    for epoch in range(start_epoch, cfg.epochs):
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 101 + rt.rank)
        if start_batch and ckpt:
            generator.set_state(ckpt["extra"]["aug_generator"])
        batches = runtime.epoch_batches(len(pool), cfg.batch_size, cfg.seed, epoch, rt)

        def on_step(done: int) -> None:
            if cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0 and done < len(batches):
                save(epoch, done, generator)

        stats = train_one_epoch(model, pool, batches, cfg, rt, optimizer, scheduler, loss_fn, generator,
                                epoch, start_batch, on_step, log, groups)
        start_batch = 0
        record = {"epoch": epoch + 1, **stats, "lr": scheduler.get_last_lr()[0], "n_images": len(pool)}
        if groups is not None:
            record["n_groups"] = int(groups.max()) + 1
        if cfg.knn_every and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            record.update(knn())
        log.log(record, step=epoch + 1)
        save(epoch + 1, 0, generator)
        runtime.barrier()


@rundir.holds_run_dirs
def run(cfg: PretrainConfig) -> Path:
    """One SimCLR pretraining run; returns its run dir (encoder.pt is the backbone's state_dict)."""
    # ---------------------------------------------------------------- config
    rt = runtime.setup(cfg)
    fileio.git_sha()  # record the code version as it is now, at the start
    run_dir = rundir.claim(cfg, f"runs/pretrain-{cfg.arch}-{cfg.image_size}", enabled=rt.is_main)
    torch.manual_seed(cfg.seed)

    # ---------------------------------------------------------------- data
    if cfg.data_dir is None and rt.is_main:  # under torchrun, one rank writes the phantom set
        data.phantom_dir_of(cfg)
    runtime.barrier()
    images = data.load_dataset(cfg)
    pool, groups, monitor_bank, monitor_query = build_pool(cfg, images, splits.splits_for(cfg, images), rt)

    # ---------------------------------------------------------------- model
    backbone, feature_dim = build_backbone(cfg.arch)
    init_backbone(backbone, cfg.arch, cfg.init)
    model = runtime.wrap_ddp(rt.prepare_model(SimCLRModel(backbone, feature_dim, cfg.proj_hidden_dim,
                                                          cfg.proj_out_dim)), rt, cfg.sync_bn)
    core = getattr(model, "module", model)  # unwrapped from DDP: what we save and evaluate
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(pool) // (cfg.batch_size * rt.world_size))
    loss_fn = build_loss(cfg, rt)

    # ---------------------------------------------------------------- resume
    last = run_dir / runs.LAST_CHECKPOINT  # older run dirs keep it in checkpoints/: resumed from there
    ckpt = checkpoint.restore(runs.last_checkpoint(run_dir) or last, core, optimizer, scheduler, cfg.arch)
    start_epoch = ckpt["epoch"] if ckpt else 0
    log = RunLog(run_dir, enabled=rt.is_main, resume_epoch=start_epoch if ckpt else None)
    if start_epoch >= cfg.epochs:
        if rt.is_main:
            export_encoder(core, run_dir)
            print(f"pretraining already finished ({start_epoch} epochs) in {run_dir}")
        runtime.cleanup()
        return run_dir

    # ---------------------------------------------------------------- loop
    fit(model, core, pool, groups, (monitor_bank, monitor_query), len(images.classes), cfg, rt, optimizer,
        scheduler, loss_fn, ckpt, last, log)

    # ---------------------------------------------------------------- save
    if rt.is_main:
        export_encoder(core, run_dir)
        log_embeddings(core, monitor_query, cfg, rt, log)
        print(f"encoder: {run_dir / 'encoder.pt'}  (tensorboard --logdir {run_dir})")
    log.close()
    runtime.cleanup()
    return run_dir


@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    """``python -m simclr_ad.pretrain``: the config from YAML and flags, then ``run``."""
    return run(parse_config(PretrainConfig, "pretrain", argv, __doc__))


if __name__ == "__main__":
    runtime.reexec_with_tuned_malloc()
    main()
