"""A rank of a two-rank run (``tests.train.forked``, entry ``tests.train.fsdp_worker:main``): build the Trainer as
train.py does (FSDP2 + activation checkpointing + compiled layers), train the configured batches, and let rank 0
report what Composer actually did to the model to argv[0].

The test sets ``model.compile_backend=aot_eager`` (traced, partitioned, no code generated): inductor's C++ code
generation takes minutes on the development CPU, and what FSDP2 and checkpointing can break is the tracing."""

from __future__ import annotations

import json
import math

from composer.utils import dist
from torch._dynamo.utils import counters
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.tensor import DTensor

from perceiver_stream.config import build, load
from perceiver_stream.model.modules import CrossAttentionLayer, SelfAttentionLayer
from perceiver_stream.optim import Lamb
from perceiver_stream.train.config import TrainConfig
from perceiver_stream.train.trainer import build_trainer


def main(argv: list[str]) -> None:
    out, config, *overrides = argv
    trainer = build_trainer(build(TrainConfig, load(config, overrides)))
    model = trainer.state.model
    wrapped = [m._checkpoint_wrapped_module for m in model.modules() if isinstance(m, CheckpointWrapper)]
    layers = [m for m in model.modules() if isinstance(m, CrossAttentionLayer | SelfAttentionLayer)]
    report = {  # before training: after it the root's parameters are left unsharded (FSDP2 reshards it lazily)
        "layers": len(layers),
        "checkpointed_layers": sum(any(w is layer for w in wrapped) for layer in layers),
        "checkpoint_wrappers": len(wrapped),
        "compiled_layers": sum(layer._compiled_call_impl is not None for layer in layers),
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in model.parameters()),
        "parameters": sum(1 for _ in model.parameters()),
        "optimizer": type(trainer.state.optimizers[0]).__name__,
    }
    trainer.fit()
    report.update(traced_graphs=counters["stats"]["unique_graphs"], batches=int(trainer.state.timestamp.batch),
                  loss_is_finite=math.isfinite(float(trainer.state.loss)))
    trainer.close()
    if dist.get_global_rank() == 0:
        with open(out, "w") as f:
            json.dump(report, f)
    assert isinstance(trainer.state.optimizers[0], Lamb)
