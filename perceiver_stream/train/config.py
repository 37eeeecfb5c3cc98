"""The run configuration: what ``yamls/*.yaml`` hold, with Composer's names for trainer settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from perceiver_stream.config import ConfigError, build
from perceiver_stream.data.config import ClassificationDataConfig, DataConfig
from perceiver_stream.model.config import PerceiverClassifierConfig, PerceiverMLMConfig
from perceiver_stream.optim.build import OptimizerConfig
from perceiver_stream.remote import is_remote

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")


@dataclass
class SchedulerConfig:
    """The learning-rate schedule (Composer's schedulers).

    Attributes:
        name: ``constant_with_warmup`` (linear warmup, then constant: the blueprint's) or
            ``cosine_with_warmup`` (linear warmup, then cosine decay to ``alpha_f * lr``: the paper's option).
        t_warmup: warmup duration in Composer's time units (``1000ba``: 1,000 batches).
        alpha_f: final learning rate as a fraction of the peak (cosine only).
    """

    name: str = "constant_with_warmup"
    t_warmup: str = "1000ba"
    alpha_f: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("constant_with_warmup", "cosine_with_warmup"):
            raise ValueError(f"scheduler.name={self.name!r}: expected constant_with_warmup or cosine_with_warmup")


@dataclass
class FSDPSettings:
    """Sharded data parallelism (Composer's FSDP).

    Attributes:
        version: 1 (FSDP1, GPUs only in Composer 0.32.1) or 2 (FSDP2, also on CPU with gloo).
        sharding_strategy: FULL_SHARD, SHARD_GRAD_OP, NO_SHARD or HYBRID_SHARD (FSDP1; FSDP2 maps FULL_SHARD
            to resharding after forward and SHARD_GRAD_OP to keeping parameters gathered).
        mixed_precision: Composer's FSDP mixed-precision preset (DEFAULT, PURE, FULL).
        state_dict_type: ``full`` or ``sharded`` checkpoints.

    Activation checkpointing and offloading are ``model.*`` settings, the same under every parallelism; the
    keys Composer's FSDP config has for them are not repeated here (``REMOVED_KEYS``).
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "activation_checkpointing": "set model.activation_checkpointing (one setting under every parallelism)",
        "activation_cpu_offload": "set model.activation_offloading (one setting under every parallelism)",
        "cpu_offload": "Composer 0.32.1 has no FSDP parameter offload; to save GPU memory offload activations with "
                       "model.activation_offloading=true",
    }

    version: int = 2
    sharding_strategy: str = "FULL_SHARD"
    mixed_precision: str = "DEFAULT"
    state_dict_type: str = "full"

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"parallelism.fsdp.version={self.version}: expected 1 or 2")
        if self.sharding_strategy not in SHARDING_STRATEGIES:
            raise ValueError(f"parallelism.fsdp.sharding_strategy={self.sharding_strategy!r}: expected one of "
                             f"{', '.join(SHARDING_STRATEGIES)}")
        if self.state_dict_type not in ("full", "sharded"):
            raise ValueError(f"parallelism.fsdp.state_dict_type={self.state_dict_type!r}: expected full or sharded")


@dataclass
class ParallelismSettings:
    """How the run spreads over devices.

    Attributes:
        fsdp: sharded data parallelism (``FSDPSettings``); null trains with DDP across devices.
    """

    fsdp: FSDPSettings | None = None


@dataclass
class WandBSettings:
    """Weights & Biases (``WANDB_MODE=offline`` works without a network; ``wandb sync`` uploads later).

    Attributes:
        project: the W&B project.
        entity: the W&B team or user (null: your default).
        name: the run's name in W&B (null: ``run_name``).
        group: a W&B group the run joins (e.g. a sweep's).
        tags: W&B tags.
    """

    project: str = "perceiver-stream"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TensorBoardSettings:
    """TensorBoard event files.

    Attributes:
        log_dir: where the event files go (a folder per ``run_name`` inside).
        flush_interval: batches between writes to disk.
    """

    log_dir: str = "logs/mlm"
    flush_interval: int = 100


@dataclass
class LoggerSettings:
    """Where metrics go; any logger is switched off with ``loggers.<name>=null``.

    Attributes:
        wandb: Weights & Biases (``WandBSettings``); null: off.
        tensorboard: TensorBoard (``TensorBoardSettings``); null: off.
    """

    wandb: WandBSettings | None = None
    tensorboard: TensorBoardSettings | None = None


@dataclass
class CallbackSettings:
    """What the run logs beside its losses and metrics.

    Attributes:
        speed_monitor_window: batches SpeedMonitor averages throughput and MFU over.
        fill_mask_sentences: sentences with ``<mask>`` whose predictions are logged at every eval.
        sample_log: a JSONL file recording the global sample indices of every batch (a debugging aid for
            resumption; null: off).
        probes: linear probes at every evaluation of a pretraining run: task name -> a local directory of labelled
            shards (``perceiver-convert rotten-tomatoes --out DIR``: its ``train`` and ``val``), converted with the
            run's tokenizer and ``max_seq_len``; logged as ``metrics/probe/<name>/accuracy``
            (``perceiver_stream.probe``).
        probe_train_samples: the training documents each probe fits on, at most (a fixed draw of the seed).
    """

    speed_monitor_window: int = 100
    fill_mask_sentences: list[str] = field(default_factory=lambda: [
        "The capital of France is <mask>.",
        "The river flows into the <mask> Sea.",
        "She was born in 1950 and <mask> in 2010.",
        "The book was written by a famous <mask>.",
    ])
    sample_log: str | None = None
    probes: dict[str, str] = field(default_factory=dict)
    probe_train_samples: int = 4096

    def __post_init__(self) -> None:
        if self.probe_train_samples < 10:
            raise ValueError(f"callbacks.probe_train_samples={self.probe_train_samples}: expected at least 10 (the "
                             "regression's strength is chosen on a fifth of them)")


@dataclass
class TrainConfig:
    """One training run. Trainer settings use Composer's names (as llm-foundry does).

    Attributes:
        model: the model (``PerceiverMLMConfig``; for ``task: classification``, ``PerceiverClassifierConfig``).
        data: the streams, tokenizer and masking (``DataConfig``; for a classifier, ``ClassificationDataConfig``).
        task: ``mlm`` (pretraining, this class) or ``classification`` (``ClassifierTrainConfig``): which model and
            data the ``model:`` and ``data:`` sections describe.
        run_name: the run's name: checkpoints, logs and ``{run_name}`` in ``save_folder`` use it.
        seed: seeds the initial weights and, unless ``data.masking_seed`` is set, the masks (the data order has
            ``data.shuffle_seed``).
        max_duration: how long to train, in Composer's time units (``500000ba``: batches; ``3ep``: epochs).
        eval_interval: how often to evaluate on the val split (``1000ba``, ``1ep``).
        eval_subset_num_batches: evaluate on this many batches of the val split (-1: all of it).
        eval_first: evaluate before the first batch (the initialisation's figures, e.g. for the probes).
        global_train_batch_size: samples per optimizer step over all devices (split evenly across them).
        device_train_microbatch_size: samples per forward/backward pass on one device; smaller than the
            per-device batch means gradient accumulation.
        device_eval_batch_size: samples per evaluation batch on one device.
        precision: ``fp32``, ``amp_bf16`` or ``amp_fp16`` (mixed precision needs a GPU).
        grad_clip_norm: clip the gradients' global norm to this (null: no clipping).
        optimizer: the optimizer (``OptimizerConfig``).
        scheduler: the learning-rate schedule (``SchedulerConfig``).
        parallelism: DDP or FSDP (``ParallelismSettings``).
        save_folder: where checkpoints go: a local directory or an object-store URI (``s3://bucket/path``), with
            ``{run_name}`` filled in; null: no checkpoints. A run holds it against a second run (``lease.py``).
        save_interval: how often to save a checkpoint (``1000ba``, ``1ep``).
        save_num_checkpoints_to_keep: how many local checkpoints to keep (-1: all).
        save_overwrite: let a checkpoint replace an existing file of the same name.
        autoresume: continue from the newest intact checkpoint in ``save_folder`` (needs ``run_name``).
        load_path: a checkpoint to start from (weights, optimizer and data position), when not autoresuming.
        console_log_interval: how often metrics are printed when ``progress_bar`` is off.
        progress_bar: a progress bar on the console instead of metric lines.
        loggers: TensorBoard and W&B (``LoggerSettings``).
        callbacks: fill-mask table, sample log, linear probes, throughput window (``CallbackSettings``).
        dist_timeout: seconds a rank waits for the others, at start and in each collective (torch's default is
            30 minutes). A rank that dies is noticed at once; one silent this long counts as lost too. Either way
            every rank stops with one line, and relaunching all nodes with ``autoresume`` continues the run.
    """

    model: PerceiverMLMConfig
    data: DataConfig
    task: str = "mlm"
    run_name: str = "perceiver-mlm"
    seed: int = 17
    max_duration: str = "500000ba"
    eval_interval: str = "1ep"
    eval_subset_num_batches: int = -1
    eval_first: bool = False
    global_train_batch_size: int = 2048
    device_train_microbatch_size: int = 128
    device_eval_batch_size: int = 128
    precision: str = "amp_bf16"
    grad_clip_norm: float | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallelism: ParallelismSettings = field(default_factory=ParallelismSettings)
    save_folder: str | None = None
    save_interval: str = "1000ba"
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    autoresume: bool = False
    load_path: str | None = None
    console_log_interval: str = "100ba"
    progress_bar: bool = True
    loggers: LoggerSettings = field(default_factory=LoggerSettings)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    dist_timeout: float = 300.0

    def __post_init__(self) -> None:
        if TASKS.get(self.task) is not type(self):
            raise ValueError(f"task={self.task!r} does not describe this configuration")
        for key in ("global_train_batch_size", "device_train_microbatch_size", "device_eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: must be at least 1")
        if self.precision not in ("fp32", "amp_bf16", "amp_fp16"):
            raise ValueError(f"precision={self.precision!r}: expected fp32, amp_bf16 or amp_fp16")
        if self.dist_timeout <= 0:
            raise ValueError(f"dist_timeout={self.dist_timeout}: must be a positive number of seconds")
        fsdp = self.parallelism.fsdp
        if fsdp is not None and fsdp.state_dict_type == "sharded" and is_remote(self.save_folder):
            raise ValueError(f"parallelism.fsdp.state_dict_type=sharded with save_folder={self.save_folder}: Composer "
                             "0.32.1 cannot save sharded checkpoints to object storage (its save expects a local "
                             "file); use state_dict_type=full with a bucket, or a local or shared-filesystem "
                             "save_folder")
        if self.autoresume and (self.save_folder is None or not self.run_name):
            raise ValueError("autoresume=true needs save_folder and run_name (the run is found by its name)")
        if self.callbacks.probes and self.task != "mlm":
            raise ValueError("callbacks.probes: linear probes measure a pretraining run's encoder (task: mlm); a "
                             "classification run reports its own val accuracy")
        if self.model.max_seq_len < self.data.max_seq_len:
            raise ValueError(f"model.max_seq_len={self.model.max_seq_len} is smaller than "
                             f"data.max_seq_len={self.data.max_seq_len}")


@dataclass
class ClassifierTrainConfig(TrainConfig):
    """Fine-tuning a classifier (``task: classification``): the same trainer settings, a classifier's ``model:``
    (``PerceiverClassifierConfig``) and labelled shards in ``data:`` (``ClassificationDataConfig``)."""

    model: PerceiverClassifierConfig
    data: ClassificationDataConfig
    task: str = "classification"


TASKS: dict[str, type[TrainConfig]] = {"mlm": TrainConfig, "classification": ClassifierTrainConfig}


def build_train_config(data: dict) -> TrainConfig:
    """The run configuration of a loaded yaml (``perceiver_stream.config.load``), of the class its ``task`` names."""
    task = data.get("task", "mlm")
    if task not in TASKS:
        raise ConfigError(f"task={task!r}: expected one of {', '.join(TASKS)}")
    return build(TASKS[task], data)


@dataclass
class BatchPlan:
    """How the global batch splits over devices and micro-batches."""

    devices: int
    device_batch_size: int
    microbatch_size: int

    @property
    def accumulation_steps(self) -> int:
        return -(-self.device_batch_size // self.microbatch_size)


def batch_plan(cfg: TrainConfig, world_size: int) -> BatchPlan:
    """The per-device batch of ``global_train_batch_size`` on ``world_size`` devices, or a clear error."""
    if cfg.global_train_batch_size % world_size:
        raise ConfigError(f"global_train_batch_size={cfg.global_train_batch_size} is not divisible by the "
                         f"{world_size} devices of this run")
    device_batch = cfg.global_train_batch_size // world_size
    microbatch = min(cfg.device_train_microbatch_size, device_batch)  # more devices, same yaml: no accumulation
    if device_batch % microbatch:
        raise ConfigError(f"device_train_microbatch_size={cfg.device_train_microbatch_size} does not divide the "
                         f"per-device batch {device_batch} (global_train_batch_size={cfg.global_train_batch_size} "
                         f"on {world_size} devices)")
    return BatchPlan(world_size, device_batch, microbatch)
