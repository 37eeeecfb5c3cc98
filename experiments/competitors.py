"""The competitors' pretraining, each on its own fast path: transformers' ``PerceiverForMaskedLM`` in ours' shape and
``BertForMaskedLM`` in Google's BERT-mini shape (what a user would pretrain instead), trained by transformers'
``Trainer`` with its ``DataCollatorForWholeWordMask`` on the same training samples ours trains on."""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from composer.core import Time, TimeUnit

from experiments.corpora import Scorer
from perceiver_stream.data.format import WORD_CONTINUATION
from perceiver_stream.model.hf import to_hf_config
from perceiver_stream.train.config import TrainConfig

BERT_MINI = {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024}  # Google's BERT-mini (Turc et al. 2019)


def perceiver_mlm(cfg: TrainConfig):
    """transformers' ``PerceiverForMaskedLM`` in ours' shape."""
    from transformers import PerceiverForMaskedLM

    torch.manual_seed(cfg.seed)
    return PerceiverForMaskedLM(to_hf_config(cfg.model))


def bert_mini_mlm(cfg: TrainConfig):
    """transformers' ``BertForMaskedLM`` in Google's BERT-mini shape (4 layers, 256 hidden, 4 heads, FFN 1024) with
    ours' vocabulary and sequence length: what a user would pretrain instead."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(cfg.seed)
    return BertForMaskedLM(BertConfig(vocab_size=cfg.model.vocab_size, hidden_size=BERT_MINI["hidden"],
                                      num_hidden_layers=BERT_MINI["layers"], num_attention_heads=BERT_MINI["heads"],
                                      intermediate_size=BERT_MINI["ffn"], max_position_embeddings=cfg.model.max_seq_len,
                                      type_vocab_size=1))


@dataclass
class PeerRun:
    """A competitor pretrained: the model, its batches, held-out accuracy per corpus and training seconds."""

    model: torch.nn.Module
    batches: int
    accuracy: dict[str, float]
    seconds: float


def train_hf(model, cfg: TrainConfig, train: dict[str, tuple[np.ndarray, np.ndarray]], tokenizer, scorer: Scorer, *,
             minutes: float, lr: float, max_steps: int | None = None) -> PeerRun:
    """transformers' ``Trainer`` with its whole-word masking on ``model`` for ``minutes`` of training (or exactly
    ``max_steps`` batches), at ours' batch size, warmup and seed, AdamW at ``lr``; scored by ``scorer``."""
    from datasets import Dataset
    from transformers import DataCollatorForWholeWordMask, Trainer, TrainerCallback, TrainingArguments

    # Word boundaries reach its collator the one way it takes them for a non-BERT vocabulary: "chinese_ref",
    # the positions that continue a word (without them every SentencePiece token would be a word of its own).
    ids = np.concatenate([ids for ids, _ in train.values()])
    types = np.concatenate([types for _, types in train.values()])
    continuations = [np.flatnonzero(row == WORD_CONTINUATION).tolist() for row in types]
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "chinese_ref": continuations})

    class Budget(TrainerCallback):
        def __init__(self):
            self.start = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = self.start or time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if max_steps is None:
                control.should_training_stop = time.perf_counter() - self.start >= minutes * 60

    warmup = Time.from_timestring(cfg.scheduler.t_warmup)
    if warmup.unit != TimeUnit.BATCH:
        raise SystemExit(f"scheduler.t_warmup={cfg.scheduler.t_warmup}: the transformers legs take it in batches (ba)")
    warnings.filterwarnings("ignore", message="DataCollatorForWholeWordMask is only suitable")
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="experiments-hf-"), remove_unused_columns=False,
                             per_device_train_batch_size=cfg.global_train_batch_size,
                             learning_rate=lr, warmup_steps=warmup.value, max_steps=max_steps or 10**9,
                             weight_decay=0.01, report_to=[], save_strategy="no", logging_steps=10**9,
                             dataloader_num_workers=0, use_cpu=True, seed=cfg.seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Budget()],
                      data_collator=DataCollatorForWholeWordMask(tokenizer, mlm_probability=0.15))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = scorer.score(lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    return PeerRun(model, trainer.state.global_step, accuracy, seconds)
