"""The Composer wrapper: loss, metrics, FLOPs against torch's FLOP counter, FSDP hooks on the inner module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from perceiver_stream.model.composer_model import ComposerPerceiverMLM
from perceiver_stream.model.modules import CrossAttentionLayer, SelfAttentionLayer
from tests.model.test_model import random_batch, small_config

MASK = 6


def make_batch(config, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch whose labelled positions are mostly ``<mask>`` in the input, the others left as is."""
    input_ids, attention_mask, labels = random_batch(config, batch, seed)
    g = torch.Generator().manual_seed(seed + 1)
    masked = (labels != -100) & (torch.rand(labels.shape, generator=g) < 0.8)
    input_ids = torch.where(masked, MASK, input_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_loss_is_cross_entropy_over_labelled_tokens():
    config = small_config()
    model = ComposerPerceiverMLM(config, mask_token_id=MASK).eval()
    batch = make_batch(config)
    full = model.model(batch["input_ids"], batch["attention_mask"])
    expected = F.cross_entropy(full.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    torch.testing.assert_close(model.loss(model(batch), batch), expected, atol=1e-6, rtol=1e-6)


def test_metrics_accuracy_and_cross_entropy():
    config = small_config()
    model = ComposerPerceiverMLM(config, mask_token_id=MASK).eval()
    batch = make_batch(config)
    outputs = model.eval_forward(batch)
    metrics = model.get_metrics(is_train=False)
    for metric in metrics.values():
        model.update_metric(batch, outputs, metric)
    full = model.model(batch["input_ids"], batch["attention_mask"])
    selected = batch["labels"] != -100
    accuracy = (full.argmax(-1)[selected] == batch["labels"][selected]).float().mean()
    torch.testing.assert_close(metrics["MaskedAccuracy"].compute(), accuracy)
    ce = F.cross_entropy(full[selected], batch["labels"][selected])
    torch.testing.assert_close(metrics["LanguageCrossEntropy"].compute(), ce, atol=1e-5, rtol=1e-5)
    # <mask> positions only: what the model predicts where the answer is not in the input
    at_mask = selected & (batch["input_ids"] == MASK)
    assert 0 < at_mask.sum() < selected.sum()
    expected = (full.argmax(-1)[at_mask] == batch["labels"][at_mask]).float().mean()
    torch.testing.assert_close(metrics["MaskTokenAccuracy"].compute(), expected)
    targets = batch["labels"][at_mask]
    most_frequent = torch.bincount(targets).max() / len(targets)
    torch.testing.assert_close(metrics["MaskTokenUnigramAccuracy"].compute(), most_frequent.float())


def test_flops_per_batch_matches_torch_flop_counter():
    config = small_config()
    model = ComposerPerceiverMLM(config, mask_token_id=MASK)
    batch = make_batch(config)
    with FlopCounterMode(display=False) as counter:
        model.loss(model(batch), batch).backward()
    measured = counter.get_total_flops()
    assert abs(model.flops_per_batch(batch) - measured) / measured < 0.01


def test_fsdp_and_checkpointing_hooks_live_on_the_inner_module():
    model = ComposerPerceiverMLM(small_config(), mask_token_id=MASK)
    inner = model.model
    layers = [m for m in inner.modules() if isinstance(m, (CrossAttentionLayer, SelfAttentionLayer))]
    assert all(inner.fsdp_wrap_fn(m) and inner.activation_checkpointing_fn(m) for m in layers)
    assert not inner.fsdp_wrap_fn(inner.input_adapter)
    assert not inner.activation_checkpointing_fn(inner.encoder)
    assert not hasattr(model, "fsdp_wrap_fn")


def test_activation_offloading_hands_each_checkpointed_layers_inputs_to_host_memory(monkeypatch):
    """``model.activation_offloading``: every attention layer's saved tensors go through torch's ``save_on_cpu``
    (what keeps them in host memory on a GPU), and training computes what checkpointing alone computes."""
    import dataclasses

    from torch.distributed.algorithms._checkpoint import checkpoint_wrapper

    packed = []

    class CountingSaveOnCpu(torch.autograd.graph.save_on_cpu):
        def __init__(self, pin_memory: bool = False, device_type: str = "cuda") -> None:
            super().__init__(pin_memory, device_type)
            pack = self.pack_hook  # saved_tensors_hooks keeps its hooks as attributes, registered on __enter__
            self.pack_hook = lambda tensor: (packed.append(tensor.shape), pack(tensor))[1]

    monkeypatch.setattr(checkpoint_wrapper, "save_on_cpu", CountingSaveOnCpu)
    config = dataclasses.replace(small_config(), activation_checkpointing=True)
    grads = {}
    for offload in (False, True):
        torch.manual_seed(0)
        model = ComposerPerceiverMLM(dataclasses.replace(config, activation_offloading=offload), mask_token_id=MASK)
        batch = make_batch(config)
        model.loss(model(batch), batch).backward()
        grads[offload] = {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in model.named_parameters()}
        layers = [m for m in model.modules() if isinstance(m, (CrossAttentionLayer, SelfAttentionLayer))]
        wrapped = [m for m in model.modules() if isinstance(m, checkpoint_wrapper.OffloadWrapper)]
        assert len(wrapped) == (len(layers) if offload else 0)
    assert len(packed) >= len(layers)  # at least each layer's input went to host memory
    assert grads[False].keys() == grads[True].keys()
    for name, grad in grads[True].items():
        torch.testing.assert_close(grad, grads[False][name], atol=1e-6, rtol=1e-5)
