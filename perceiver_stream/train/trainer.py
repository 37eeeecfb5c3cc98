"""Build a Composer ``Trainer`` from a ``TrainConfig``: model (MLM or classifier), data, Lamb, schedule,
parallelism, loggers."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import DataSpec, Evaluator
from composer.loggers import TensorboardLogger, WandBLogger
from composer.models import ComposerModel
from composer.optim import ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler
from composer.utils import dist, reproducibility
from composer.utils.parallelism import FSDP2Config, FSDPConfig

from perceiver_stream.checkpoint import tokenizer_files
from perceiver_stream.config import ConfigError, to_dict
from perceiver_stream.data import DataConfig, DataInfo, build_dataloader, prepare
from perceiver_stream.data.classification import count_samples
from perceiver_stream.data.masking import count_tokens
from perceiver_stream.model.composer_classifier import ComposerPerceiverClassifier
from perceiver_stream.model.composer_model import ComposerPerceiverMLM
from perceiver_stream.optim import build_optimizer
from perceiver_stream.probe import ProbeTask, read_probe_task
from perceiver_stream.remote import RemoteError, is_remote, list_objects
from perceiver_stream.train.callbacks import (
    CheckpointDigests,
    CompileCache,
    FillMaskTable,
    FirstBatchTime,
    LinearProbes,
    ResumeGuard,
    RunDescription,
    SampleLog,
    StopOnNonFiniteLoss,
)
from perceiver_stream.train.config import ClassifierTrainConfig, TrainConfig, batch_plan
from perceiver_stream.train.console import RunConsole, console_given
from perceiver_stream.train.finetune import initial_classifier
from perceiver_stream.train.resume import check_model_settings, fetch_intact, fetch_newest_intact, repair_latest
from perceiver_stream.train.space import warn_if_short

log = logging.getLogger(__name__)


def device_name() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def check_environment(cfg: TrainConfig) -> None:
    """Settings this machine cannot run, refused with the fix."""
    if device_name() == "cpu":
        if cfg.precision != "fp32":
            raise ConfigError(f"precision={cfg.precision} needs a GPU; use precision=fp32 on CPU")
        if cfg.parallelism.fsdp is not None and cfg.parallelism.fsdp.version == 1:
            raise ConfigError("parallelism.fsdp.version=1 needs GPUs (Composer 0.32.1's FSDP1 calls "
                             "torch.cuda.current_device()); use parallelism.fsdp.version=2 on CPU")
        if cfg.model.compile and cfg.model.compile_backend == "inductor":
            from torch._inductor import config as inductor_config
            from torch._inductor import cpp_builder, exc

            try:  # inductor's own search, done before training rather than in its first step's traceback
                cpp_builder.get_cpp_compiler()
            except exc.InvalidCxxCompiler:
                tried = ", ".join(c for c in inductor_config.cpp.cxx if c)
                raise ConfigError(f"model.compile=true needs a C++ compiler on CPU (inductor generates C++; {tried} "
                                  "did not run): install g++, point CXX at a compiler, or set model.compile=false "
                                  "(or model.compile_backend=aot_eager, which generates no code)"
                                  ) from None


def save_folder(cfg: TrainConfig) -> str | None:
    """``save_folder`` with ``{run_name}`` filled in: a local path or an object-store URI."""
    return cfg.save_folder and cfg.save_folder.format(run_name=cfg.run_name)


def local_save_folder(cfg: TrainConfig) -> Path | None:
    """Where checkpoints are on this machine (``{run_name}`` filled in), None without ``save_folder``. For a
    ``save_folder`` in object storage (``s3://bucket/path``), ``path`` under the working directory, where autoresume
    downloads the checkpoint it resumes (Composer writes the ones it uploads to a temporary folder of its own)."""
    folder = save_folder(cfg)
    if not folder:
        return None
    if is_remote(folder):
        from composer.utils.file_helpers import parse_uri

        return Path(parse_uri(folder)[2] or ".")
    return Path(folder)


def remote_save_folder(cfg: TrainConfig) -> str | None:
    """``save_folder`` (``{run_name}`` filled in) when it is in object storage, else None."""
    folder = save_folder(cfg)
    return folder if is_remote(folder) else None


def check_save_folder(cfg: TrainConfig) -> None:
    """The checkpoint folder must be writable (and a remote one reachable) before training, not at the first
    checkpoint hours later."""
    folder = local_save_folder(cfg)
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(f"save_folder={cfg.save_folder!r}: cannot write checkpoints to {folder} ({e.strerror}); "
                          "choose a writable directory") from None
    if (remote := remote_save_folder(cfg)) is not None:
        try:
            list_objects(remote)
        except RemoteError as e:
            raise ConfigError(f"save_folder={cfg.save_folder!r}: {e}") from None


def share_cpu_threads() -> None:
    """On CPU, give each process of a node its share of the cores, as torchrun does, unless the user set
    OMP_NUM_THREADS: every process starting one thread per core thrashes (about 10x slower on 2 cores)."""
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ or local_world_size < 2:
        return
    threads = max(1, (os.cpu_count() or 1) // local_world_size)
    torch.set_num_threads(threads)
    log.info("%d processes on this node's %d cores: %d intra-op thread(s) each (set OMP_NUM_THREADS to choose)",
             local_world_size, os.cpu_count(), threads)


def parallelism_config(cfg: TrainConfig) -> dict | None:
    fsdp = cfg.parallelism.fsdp
    if fsdp is None:
        return None
    checkpointing, offload = cfg.model.activation_checkpointing, cfg.model.activation_offloading
    if fsdp.version == 1:
        return {"fsdp": FSDPConfig(
            sharding_strategy=fsdp.sharding_strategy, mixed_precision=fsdp.mixed_precision,
            state_dict_type=fsdp.state_dict_type, activation_checkpointing=checkpointing,
            activation_checkpointing_reentrant=False, activation_cpu_offload=offload, use_orig_params=True,
        )}
    return {"fsdp": FSDP2Config(
        reshard_after_forward=fsdp.sharding_strategy != "SHARD_GRAD_OP", mixed_precision=fsdp.mixed_precision,
        state_dict_type="sharded" if fsdp.state_dict_type == "sharded" else "full",
        activation_checkpointing=checkpointing, activation_cpu_offload=offload,
    )}


def build_loggers(cfg: TrainConfig) -> list:
    loggers = []
    if cfg.loggers.tensorboard is not None:
        loggers.append(TensorboardLogger(log_dir=cfg.loggers.tensorboard.log_dir,
                                         flush_interval=cfg.loggers.tensorboard.flush_interval))
    if cfg.loggers.wandb is not None:
        w = cfg.loggers.wandb
        init_kwargs = {}  # the run record reaches W&B's config through log_hyperparameters
        if os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
            # wandb 0.18.7 asks the server whether it accepts client ids each time a Table is logged, even
            # offline, and retries forever without a network (wandb/wandb#8957); this setting skips the check.
            init_kwargs["settings"] = {"allow_offline_artifacts": False}
        loggers.append(WandBLogger(project=w.project, entity=w.entity, name=w.name or cfg.run_name, group=w.group,
                                   tags=w.tags or None, init_kwargs=init_kwargs))
    if not cfg.progress_bar:
        loggers.append(RunConsole(log_interval=cfg.console_log_interval))
    return loggers


def run_record(cfg: TrainConfig, info: DataInfo) -> dict:
    """The config and the data manifests, as logged with the run."""
    return {"config": to_dict(cfg),
            "data_manifests": {f"{stream}/{split}": m for (stream, split), m in info.manifests.items()}}


def resume_settings(cfg: TrainConfig, info: DataInfo) -> dict:
    """What must not change between restarts for a resumed run to continue exactly (docs/resumption.md)."""
    data = cfg.data
    settings = {
        "global_train_batch_size": cfg.global_train_batch_size,
        "seed": cfg.seed,
        "data.shuffle": data.shuffle,
        "data.shuffle_algo": data.shuffle_algo,
        "data.shuffle_seed": data.shuffle_seed,
        "data.shuffle_block_size": data.shuffle_block_size,
        "data.num_canonical_nodes": data.num_canonical_nodes,
        "data.epoch_size": data.epoch_size,
        "data.max_seq_len": data.max_seq_len,
        "data.streams": {name: s.proportion for name, s in data.streams.items()},
        "tokenizer fingerprint": info.tokenizer_fingerprint,
    }
    if isinstance(data, DataConfig):
        settings["data.masking_seed"] = data.masking_seed
        settings["data.masking"] = [data.masking, data.mask_prob, data.mask_replace_prob, data.random_replace_prob]
    return settings


def probe_tasks(cfg: TrainConfig, info: DataInfo) -> list[ProbeTask]:
    """``callbacks.probes`` read and checked (a one-line ``ConfigError`` naming the key), before anything heavy."""
    return [read_probe_task(name, path, tokenizer=cfg.data.tokenizer,
                            tokenizer_fingerprints=info.tokenizer_fingerprints, vocab_size=len(info.tokenizer),
                            max_seq_len=cfg.data.max_seq_len,
                            train_samples=cfg.callbacks.probe_train_samples, seed=cfg.seed)
            for name, path in cfg.callbacks.probes.items()]


def build_callbacks(cfg: TrainConfig, info: DataInfo, probes: list[ProbeTask]) -> list:
    guard = ResumeGuard(resume_settings(cfg, info), {"tokenizer fingerprint": info.tokenizer_fingerprints})
    callbacks = [SpeedMonitor(window_size=cfg.callbacks.speed_monitor_window), LRMonitor(), RuntimeEstimator(),
                 OptimizerMonitor(), guard,
                 RunDescription(to_dict(cfg), info.tokenizer_fingerprint, info.labels, tokenizer_files(info.tokenizer)),
                 StopOnNonFiniteLoss(), FirstBatchTime(), CompileCache()]
    if not isinstance(cfg, ClassifierTrainConfig):
        callbacks.append(FillMaskTable(info.tokenizer, cfg.callbacks.fill_mask_sentences))
    if probes:
        callbacks.append(LinearProbes(probes, batch_size=cfg.device_eval_batch_size, seed=cfg.seed))
    if torch.cuda.is_available():
        callbacks.append(MemoryMonitor())
    if (folder := local_save_folder(cfg)) is not None:
        callbacks.append(CheckpointDigests(folder, remote_save_folder(cfg)))
    if cfg.callbacks.sample_log:
        callbacks.append(SampleLog(cfg.callbacks.sample_log))
    return callbacks


def build_model(cfg: TrainConfig, info: DataInfo, *, wrap_activation_checkpointing: bool) -> ComposerModel:
    """The MLM, or for ``task: classification`` the classifier as ``model.encoder_from`` starts it."""
    if isinstance(cfg, ClassifierTrainConfig):
        classifier = initial_classifier(cfg.model, len(info.labels), info.tokenizer_fingerprints)
        return ComposerPerceiverClassifier(classifier, wrap_activation_checkpointing=wrap_activation_checkpointing)
    return ComposerPerceiverMLM(cfg.model, mask_token_id=info.tokenizer.mask_token_id,
                                wrap_activation_checkpointing=wrap_activation_checkpointing)


def build_trainer(cfg: TrainConfig) -> Trainer:
    """Everything checked first (environment, batch plan, shards), then the Trainer. The save folder is checked by the
    caller that holds it (``cli.train``: checked, then locked, then this)."""
    check_environment(cfg)
    share_cpu_threads()
    plan = batch_plan(cfg, dist.get_world_size())  # the launcher's WORLD_SIZE before dist starts
    folder, remote = local_save_folder(cfg), remote_save_folder(cfg)
    sharded = cfg.parallelism.fsdp is not None and cfg.parallelism.fsdp.state_dict_type == "sharded"
    # Checkpoint files in a bucket are resumed from here, checked; sharded ones (directories of objects) through
    # Composer's own autoresume, unchecked.
    bucket = None if sharded else remote
    resume_from = None  # the checkpoint fetched from the bucket (see below)
    # Before dist starts: the other ranks wait in initialize_dist below.
    if cfg.autoresume and remote is None and folder is not None and dist.get_global_rank() == 0:
        newest = repair_latest(folder, plan.devices)
        if newest is not None:
            check_model_settings(newest, to_dict(cfg.model))
    elif cfg.autoresume and bucket is not None and dist.get_global_rank() == 0:
        resume_from = fetch_newest_intact(bucket, folder)
        if resume_from is not None:
            check_model_settings(resume_from, to_dict(cfg.model))
    info = prepare(cfg.data)
    if cfg.model.vocab_size != len(info.tokenizer):
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} but tokenizer {cfg.data.tokenizer!r} has "
                         f"{len(info.tokenizer)} tokens")
    probes = probe_tasks(cfg, info)
    # Before the loaders (as the Trainer would later): their shared memory registration waits on the ranks' barrier.
    dist.initialize_dist(device_name(), cfg.dist_timeout)
    if bucket is not None and cfg.autoresume:
        # Composer's own autoresume would load the newest object whatever its bytes: it is given the checked one,
        # which every other node fetches to a disk of its own.
        chosen = [None if resume_from is None else resume_from.name]
        dist.broadcast_object_list(chosen, src=0)
        if chosen[0] is not None and dist.get_local_rank() == 0 and dist.get_global_rank() != 0:
            fetch_intact(bucket, chosen[0], folder)
        dist.barrier()
        resume_from = None if chosen[0] is None else folder / chosen[0]
    train_loader = build_dataloader(cfg.data, info, "train", plan.device_batch_size, cfg.seed)
    eval_loader = build_dataloader(cfg.data, info, "val", cfg.device_eval_batch_size, cfg.seed)

    fsdp = cfg.parallelism.fsdp
    reproducibility.seed_all(cfg.seed)  # the initial weights are a function of the seed too
    model = build_model(cfg, info, wrap_activation_checkpointing=fsdp is None)
    if folder is not None and dist.get_global_rank() == 0:
        warn_if_short(folder, sum(p.numel() for p in model.parameters()))
    process_group = "world" if fsdp is not None and fsdp.version == 1 else None
    optimizer = build_optimizer(model, cfg.optimizer, process_group=process_group)
    if cfg.scheduler.name == "constant_with_warmup":
        scheduler = ConstantWithWarmupScheduler(t_warmup=cfg.scheduler.t_warmup)
    else:
        scheduler = CosineAnnealingWithWarmupScheduler(t_warmup=cfg.scheduler.t_warmup, alpha_f=cfg.scheduler.alpha_f)
    classifier = isinstance(cfg, ClassifierTrainConfig)
    algorithms = [] if cfg.grad_clip_norm is None else [
        GradientClipping(clipping_type="norm", clipping_threshold=cfg.grad_clip_norm)]
    with console_given():
        trainer = Trainer(
            run_name=cfg.run_name,
            model=model,
            train_dataloader=DataSpec(train_loader,
                                      get_num_tokens_in_batch=count_samples if classifier else count_tokens),
            # the MLM's loss is the mean over the global batch's labelled tokens, a classifier's over its samples
            accumulate_train_batch_on_tokens=not classifier,
            eval_dataloader=Evaluator(label="eval", dataloader=eval_loader, metric_names=list(model.get_metrics())),
            eval_interval=cfg.eval_interval,
            eval_subset_num_batches=cfg.eval_subset_num_batches,
            optimizers=optimizer,
            schedulers=scheduler,
            algorithms=algorithms,
            max_duration=cfg.max_duration,
            device=device_name(),
            device_train_microbatch_size=plan.microbatch_size,
            precision=cfg.precision,
            seed=cfg.seed,
            parallelism_config=parallelism_config(cfg),
            save_folder=cfg.save_folder,
            save_interval=cfg.save_interval,
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=cfg.save_overwrite,
            # In a bucket, autoresume lists the checkpoints (above): Composer's `latest` symlink object would only hold
            # each run's end for half a minute while its uploader polls for the checkpoint before writing it.
            **({"save_latest_filename": None} if bucket is not None else {}),
            autoresume=cfg.autoresume and bucket is None,
            load_path=cfg.load_path if resume_from is None else str(resume_from),
            loggers=build_loggers(cfg),
            callbacks=build_callbacks(cfg, info, probes),
            progress_bar=cfg.progress_bar,
            log_to_console=False,  # RunConsole (build_loggers) when the progress bar is off
            dist_timeout=cfg.dist_timeout,
        )
    trainer.logger.log_hyperparameters(run_record(cfg, info))
    return trainer
