"""What an MLM checkpoint predicts where it cannot see: accuracy on the val split's ``<mask>`` positions, beside the
unigram baseline (the quickstart's summary and the learning test's criterion)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from perceiver_stream.data import build_dataloader, prepare
from perceiver_stream.data.format import is_word_token
from perceiver_stream.export import load_checkpoint_model
from perceiver_stream.model.metrics import mask_token_positions
from perceiver_stream.train.config import TrainConfig


def mask_accuracy(cfg: TrainConfig, checkpoint: Path) -> dict[str, float]:
    """Accuracy of the model on the val split's ``<mask>`` positions (where the answer is not in the input),
    beside always guessing the most frequent training token on the same positions; and, as BERT reports it,
    over all labelled positions (which rewards copying the 10% of selected words left unchanged)."""
    info = prepare(cfg.data)
    counts: Counter = Counter()
    train = build_dataloader(cfg.data, info, "train", cfg.device_eval_batch_size, cfg.seed).dataset
    for i in range(len(train)):
        record = train[i]
        counts.update(record["input_ids"][is_word_token(record["token_type"])].tolist())
    most_frequent = counts.most_common(1)[0][0]
    model = load_checkpoint_model(checkpoint, cfg.model)
    correct = Counter()
    with torch.no_grad():
        for batch in build_dataloader(cfg.data, info, "val", cfg.device_eval_batch_size, cfg.seed):
            out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
            hit = out.logits.argmax(-1) == out.targets
            is_mask = mask_token_positions(batch["input_ids"], batch["labels"], info.tokenizer.mask_token_id)
            correct.update({"labelled": int(hit.sum()), "labelled_total": len(hit), "mask": int(hit[is_mask].sum()),
                            "mask_total": int(is_mask.sum()),
                            "unigram": int((out.targets[is_mask] == most_frequent).sum())})
    return {"mask_token_accuracy": correct["mask"] / correct["mask_total"],
            "unigram_mask_token_accuracy": correct["unigram"] / correct["mask_total"],
            "masked_accuracy": correct["labelled"] / correct["labelled_total"]}
