"""Conversion rate vs the bare tokenizer on real English text (``corpus.py``: ../shared's, else the registry corpus).

Converts the Wikipedia extracts + Gutenberg books with the xlnet tokenizer (or the registry corpus with its own;
``perceiver-convert text`` internals, N workers), and times the same tokenizer's batched ``__call__`` over the same
documents in N processes with nothing written (documents read beforehand, untimed). Then converts the same documents
from a local directory laid out like a parquet hub dataset (``perceiver-convert wikibook --streaming``'s path). Prints a
last-line JSON object with ``convert_tokens_per_s``, ``tokenizer_only_tokens_per_s``, ``ratio`` (goal >= 0.8),
``hub_streaming_tokens_per_s`` and ``hub_streaming_ratio``, ``worker_max_rss_mb`` (the largest resident set of any
worker, for sizing a full Wikibook conversion) and ``corpus``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from corpus import bench_corpus

from perceiver_stream.convert.hub import HubSpec
from perceiver_stream.convert.input import Stats
from perceiver_stream.convert.sources import Source
from perceiver_stream.convert.tokenizer import load_tokenizer
from perceiver_stream.convert.writer import Options, convert

_documents: list[str] = []


def _tokenize_share(args: tuple[str, int, int, int]) -> int:
    tokenizer_path, worker, workers, batch_size = args
    tokenizer = load_tokenizer(tokenizer_path)
    share = _documents[worker::workers]
    tokens = 0
    for start in range(0, len(share), batch_size):
        encoded = tokenizer(share[start:start + batch_size], add_special_tokens=False,
                            return_attention_mask=False, return_token_type_ids=False)
        tokens += sum(len(ids) for ids in encoded["input_ids"])
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-seq-len", type=int, default=512)
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    corpus = bench_corpus()
    tokenizer = corpus.tokenizer
    source = Source("files", files=corpus.files)
    options = Options(tokenizer=tokenizer, max_seq_len=args.max_seq_len, workers=args.workers)

    _documents.extend(source.documents(Stats()))
    start = time.perf_counter()
    with mp.get_context("fork").Pool(args.workers) as pool:
        bare_tokens = sum(pool.map(_tokenize_share, [(tokenizer, k, args.workers, options.batch_documents)
                                                     for k in range(args.workers)]))
    bare_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifests = convert({".": source}, Path(tmp) / "out", options)
        convert_seconds = time.perf_counter() - start
    converted_tokens = sum(m["counts"]["tokens"] for m in manifests.values())
    assert converted_tokens == bare_tokens, (converted_tokens, bare_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp) / "hub"
        (hub / "data").mkdir(parents=True)
        parts = 2 * args.workers  # whole files dealt out to the workers
        for k in range(parts):
            name = f"train-{k:05d}-of-{parts:05d}.parquet"
            pq.write_table(pa.table({"text": _documents[k::parts]}), hub / "data" / name)
        start = time.perf_counter()
        streamed = convert({".": Source("hub", hub=HubSpec(str(hub)), streaming=True)}, Path(tmp) / "out", options)
        hub_seconds = time.perf_counter() - start
    hub_tokens = sum(m["counts"]["tokens"] for m in streamed.values())
    assert hub_tokens == bare_tokens, (hub_tokens, bare_tokens)
    convert_rate, bare_rate = converted_tokens / convert_seconds, bare_tokens / bare_seconds
    print(json.dumps({"corpus": corpus.name, "workers": args.workers, "tokens": converted_tokens,
                      "convert_tokens_per_s": round(convert_rate), "tokenizer_only_tokens_per_s": round(bare_rate),
                      "ratio": round(convert_rate / bare_rate, 3),
                      "hub_streaming_tokens_per_s": round(hub_tokens / hub_seconds),
                      "hub_streaming_ratio": round(hub_tokens / hub_seconds / bare_rate, 3),
                      "worker_max_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
