"""Masking throughput: our collator vs transformers' maskers, and the whole streaming pipeline.

Real English text (``corpus.py``: ../shared's Wikipedia extracts, else the registry corpus) at seq 512, batches of 64:

1. collator alone, samples/s: ours (whole-word), transformers' ``DataCollatorForLanguageModeling`` with
   ``whole_word_mask=True`` (offset-mapping based; the same xlnet samples with their ``offset_mapping``;
   it supports only ``mask_replace_prob=1.0, random_replace_prob=0.0``), the older
   ``DataCollatorForWholeWordMask`` (BERT ``##`` tokenizers only: the same text tokenized with
   bert-base-uncased; left out, with the reason, where bert-base-uncased is not on this machine), and the
   token-level ``DataCollatorForLanguageModeling``;
2. the full pipeline (StreamingDataset over converted shards + our collator) with 1 worker, samples/s.

Prints a last-line JSON object with ``collator_samples_per_s``, ``hf_wwm_samples_per_s`` (the faster HF whole-word
masker), ``hf_token_samples_per_s``, ``pipeline_samples_per_s_per_worker``, ``corpus``. transformers' collators are
timed on their fast paths too (tensor features with a ``special_tokens_mask``, or a list of tensors) and on lists of
ints (``*_lists_*``); the faster of each is the reference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from corpus import bench_corpus, bert_tokenizer
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, DataCollatorForWholeWordMask

from perceiver_stream.config import build
from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.writer import Options, convert
from perceiver_stream.data import DataConfig, build_dataloader, prepare

SEQ, BATCH = 512, 64


def chunks(encodings, key: str) -> list[list]:
    """Concatenate every document's ``key`` and cut it into SEQ-long samples."""
    flat = [x for encoding in encodings for x in getattr(encoding, key)]
    return [flat[i:i + SEQ] for i in range(0, len(flat) - SEQ + 1, SEQ)]


def rate(collate: Callable[[list], object], features: list, seconds: float) -> float:
    """Samples per second of ``collate`` over consecutive batches of ``features``, for about ``seconds``."""
    batches = [features[i:i + BATCH] for i in range(0, len(features) - BATCH + 1, BATCH)]
    collate(batches[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        collate(batches[done % len(batches)])
        done += 1
    return done * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per collator")
    args = parser.parse_args()
    corpus = bench_corpus()
    xlnet_path, wiki = corpus.tokenizer, corpus.streams["wikipedia"]
    xlnet = AutoTokenizer.from_pretrained(xlnet_path)
    bert = bert_tokenizer()
    texts = list(wiki.documents(Stats()))

    with tempfile.TemporaryDirectory() as tmp:
        convert({"wiki": wiki}, Path(tmp) / "shards",
                Options(tokenizer=xlnet_path, max_seq_len=SEQ, val_fraction=0.01, workers=2))
        cfg = build(DataConfig, {"streams": {"wiki": {"local": str(Path(tmp) / "shards" / "wiki")}},
                                 "tokenizer": xlnet_path, "max_seq_len": SEQ, "num_workers": 1}, "data.")
        info = prepare(cfg, ("train",))
        loader = build_dataloader(cfg, info, "train", batch_size=BATCH, seed=0)
        records = [loader.dataset[i] for i in range(len(loader.dataset))]
        ours = rate(loader.collate_fn, records, args.seconds)
        start, samples = time.perf_counter(), 0
        for batch in loader:
            samples += len(batch["input_ids"])
        pipeline = samples / (time.perf_counter() - start)

    xlnet_enc = xlnet(texts, add_special_tokens=False, return_offsets_mapping=True)
    offset_features = [{"input_ids": ids, "offset_mapping": offsets} for ids, offsets in
                       zip(chunks(xlnet_enc.encodings, "ids"), chunks(xlnet_enc.encodings, "offsets"), strict=True)]
    token_features = [{"input_ids": f["input_ids"]} for f in offset_features]
    # transformers' fast paths: tensors, and a special_tokens_mask so no per-token Python scan is needed
    no_specials = torch.zeros(SEQ, dtype=torch.long)
    fast_offset_features = [{"input_ids": torch.tensor(f["input_ids"]),
                             "offset_mapping": torch.tensor(f["offset_mapping"]), "special_tokens_mask": no_specials}
                            for f in offset_features]
    fast_token_features = [{"input_ids": torch.tensor(f["input_ids"]), "special_tokens_mask": no_specials}
                           for f in token_features]
    offset_wwm = DataCollatorForLanguageModeling(xlnet, whole_word_mask=True, mask_replace_prob=1.0,
                                                 random_replace_prob=0.0, return_tensors="pt")
    hf_offset_wwm_slow = rate(offset_wwm, offset_features, args.seconds)
    hf_offset_wwm = max(hf_offset_wwm_slow, rate(offset_wwm, fast_offset_features, args.seconds))
    hf_bert_wwm = None
    if bert is not None:
        bert_features = [{"input_ids": ids} for ids in chunks(bert(texts, add_special_tokens=False).encodings, "ids")]
        hf_bert_wwm = rate(DataCollatorForWholeWordMask(bert, return_tensors="pt"), bert_features, args.seconds)
    token_masker = DataCollatorForLanguageModeling(xlnet, return_tensors="pt")
    hf_token_slow = rate(token_masker, token_features, args.seconds)
    hf_token = max(hf_token_slow, rate(token_masker, fast_token_features, args.seconds),
                   rate(token_masker, [f["input_ids"] for f in fast_token_features], args.seconds))
    hf_wwm = max(hf_offset_wwm, hf_bert_wwm or 0)
    print(json.dumps({
        "corpus": corpus.name,
        "samples": len(records),
        "collator_samples_per_s": round(ours),
        "hf_offset_wwm_samples_per_s": round(hf_offset_wwm),
        "hf_offset_wwm_lists_samples_per_s": round(hf_offset_wwm_slow),
        "hf_bert_wwm_samples_per_s": None if bert is None else round(hf_bert_wwm),
        "hf_wwm_samples_per_s": round(hf_wwm),
        "hf_token_samples_per_s": round(hf_token),
        "hf_token_lists_samples_per_s": round(hf_token_slow),
        "pipeline_samples_per_s_per_worker": round(pipeline),
        "vs_hf_wwm": round(ours / hf_wwm, 1),
        "vs_hf_token": round(ours / hf_token, 2),
    }))


if __name__ == "__main__":
    main()
