"""Run a conversion: parallel workers, one MDS group each, merged index, manifest, atomic output.

Worker ``k`` of ``W`` converts raw documents ``k, k + W, k + 2W, ...`` and writes its own MDS group per
split; the groups are merged into one ``index.json`` per split in worker order. Output is therefore a pure
function of (input, arguments, worker count). Everything is written under ``.<out>.partial`` and renamed to
``out`` only when complete, so an interrupted run never leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import queue as queue_module
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from copy import deepcopy
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from streaming import MDSWriter
from streaming.base.util import merge_index
from tqdm import tqdm

from perceiver_stream.convert.input import InputError, Stats
from perceiver_stream.convert.output import (
    check_output,
    check_remote_output,
    upload_output,
    write_manifest,
    written_atomically,
)
from perceiver_stream.convert.packing import Packer, token_dtype, tokenize
from perceiver_stream.convert.sources import MAX_REPLACED_FRACTION, Source
from perceiver_stream.convert.tokenizer import describe, load_tokenizer, separator_id
from perceiver_stream.data.format import IDS_COLUMN, SPLITS, TYPES_COLUMN


class ConversionError(RuntimeError):
    """A conversion that failed for another reason than its input (a worker died or raised); one line."""


@dataclass(frozen=True)
class Options:
    """Conversion arguments; all of them are recorded in the manifest."""

    tokenizer: str
    max_seq_len: int = 512
    val_fraction: float = 0.005
    final_sample: str = "pad"  # or "drop"
    workers: int = 1
    shard_size_limit: int = 1 << 26
    batch_documents: int = 64
    max_replaced_fraction: float = MAX_REPLACED_FRACTION

    def __post_init__(self) -> None:
        if self.max_seq_len < 2:
            raise InputError(f"--max-seq-len {self.max_seq_len}: must be at least 2")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if self.final_sample not in ("pad", "drop"):
            raise InputError(f"--final-sample {self.final_sample}: expected pad or drop")
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be at least 1")
        if not 0.0 <= self.max_replaced_fraction <= 1.0:
            raise InputError(f"--max-replaced-fraction {self.max_replaced_fraction}: must be in [0, 1]")


@dataclass
class PartResult:
    """What one worker wrote for one stream."""

    documents: Counter = field(default_factory=Counter)  # per split
    tokens: Counter = field(default_factory=Counter)
    samples: Counter = field(default_factory=Counter)
    padding_tokens: Counter = field(default_factory=Counter)
    dropped_tokens: Counter = field(default_factory=Counter)
    stats: Stats = field(default_factory=Stats)


def is_val(text: str, val_fraction: float) -> bool:
    """Stable split: a document's blake2b hash decides, the same on every run and machine."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


Report = Callable[[tuple[int, int, int]], None]  # (documents, tokens, bytes) done since the last report
_report: Report | None = None  # set in each pool worker by _start_worker
PARENT_CHECK_SECONDS = 0.5


def _convert_part(source: Source, root: Path, worker: int, options: Options,
                  report: Report | None = None) -> PartResult:
    report = report or _report
    tokenizer = load_tokenizer(options.tokenizer)
    dtype = token_dtype(len(tokenizer))
    columns = {IDS_COLUMN: f"ndarray:{dtype}:{options.max_seq_len}",
               TYPES_COLUMN: f"ndarray:uint8:{options.max_seq_len}"}
    result = PartResult()
    packers = {split: Packer(options.max_seq_len, separator_id(tokenizer), tokenizer.pad_token_id,
                             options.final_sample == "pad") for split in SPLITS}
    writers = {split: MDSWriter(out=str(root / split / f"part-{worker:04d}"), columns=columns, compression="zstd",
                                hashes=["xxh64"], size_limit=options.shard_size_limit) for split in SPLITS}

    def write(split: str, samples) -> None:
        for ids, types in samples:
            writers[split].write({IDS_COLUMN: ids.astype(dtype), TYPES_COLUMN: types})
            result.samples[split] += 1

    def flush(batch: list[str]) -> None:
        encoded = tokenize(tokenizer, batch)
        for text, (ids, types) in zip(batch, encoded, strict=True):
            split = "val" if is_val(text, options.val_fraction) else "train"
            result.documents[split] += 1
            result.tokens[split] += len(ids)
            write(split, packers[split].add(ids, types))
        report((len(batch), sum(len(ids) for ids, _ in encoded), sum(len(t) for t in batch)))

    batch: list[str] = []
    for text in source.documents(result.stats, share=(worker, options.workers)):
        batch.append(text)
        if len(batch) == options.batch_documents:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    for split in SPLITS:
        write(split, packers[split].finish())
        result.padding_tokens[split] = packers[split].padding_tokens
        result.dropped_tokens[split] = packers[split].dropped_tokens
        writers[split].finish()
    return result


def _start_worker(queue, parent: int) -> None:
    """Pool initializer: progress reports go to the parent's queue, and the worker exits once the parent is gone
    (a parent killed with SIGKILL cannot stop its workers; without this they would wait on a pipe forever)."""
    global _report
    _report = queue.put
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is adopted by another process
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the workers now: ``shutdown`` alone would wait for the running
    conversions to finish (and so would the interpreter's exit)."""
    processes = list((pool._processes or {}).values())  # no public handle on the workers before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


def _run_workers(source: Source, root: Path, options: Options, description: str) -> list[PartResult]:
    progress = tqdm(desc=description, unit=" docs", dynamic_ncols=True, mininterval=1.0)
    start, tokens, nbytes = time.monotonic(), 0, 0

    def update(done: tuple[int, int, int]) -> None:
        nonlocal tokens, nbytes
        docs, n_tokens, n_bytes = done
        tokens, nbytes = tokens + n_tokens, nbytes + n_bytes
        progress.update(docs)
        elapsed = max(time.monotonic() - start, 1e-9)
        progress.set_postfix(tokens=f"{tokens:,}", MB_s=f"{nbytes / elapsed / 1e6:.2f}", refresh=False)

    try:
        return _run_parts(source, root, options, description, update)
    finally:
        progress.close()  # ends the progress line, so an error message starts on its own


# (workers, pool, progress queue) kept between conversions: see _worker_pool
_pool: tuple[int, ProcessPoolExecutor, mp.queues.Queue] | None = None


def _worker_pool(workers: int) -> tuple[ProcessPoolExecutor, mp.queues.Queue]:
    """The process's pool of ``workers`` conversion workers, started at its first use and kept: a spawned worker
    spends ~12 s of CPU importing torch, transformers and streaming before it converts anything, so the streams of
    one conversion (and the later conversions of a process, as in the tests) share them.

    Not "fork": the caller may hold threads (tqdm's monitor, tokenizers, streaming, torch), and a child forked
    while one of them holds a lock waits on it forever. Not a fork server either: its workers are not our
    children, and they outlived a killed parent. An executor, not a Pool: a worker killed by the OS breaks it
    with an error instead of leaving the map waiting forever.
    """
    global _pool
    if _pool is not None and (_pool[0] != workers or not _all_alive(_pool[1])):
        close_worker_pool()  # a worker that died idle (the OOM killer, say) may not have broken the pool yet
    if _pool is None:
        context = mp.get_context("spawn")
        queue = context.Queue()
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=(queue, os.getpid()))
        _pool = (workers, pool, queue)
    return _pool[1], _pool[2]


def _all_alive(pool: ProcessPoolExecutor) -> bool:
    """No worker has exited and the pool has not noticed one that did. A process's sentinel becomes readable when
    it exits, whoever reaps it: ``is_alive`` answers True while the pool's own thread is reaping it."""
    sentinels = [process.sentinel for process in (pool._processes or {}).values()]
    return not pool._broken and not mp.connection.wait(sentinels, timeout=0)


def close_worker_pool() -> None:
    """Stop the kept conversion workers (``_worker_pool``), e.g. to free their memory in a long-lived process."""
    global _pool
    if _pool is not None:
        _stop(_pool[1])
        _pool = None


def _run_parts(source: Source, root: Path, options: Options, description: str, update: Report) -> list[PartResult]:
    global _pool
    if options.workers == 1:
        return [_convert_part(source, root, 0, options, update)]
    pool, queue = _worker_pool(options.workers)
    try:
        try:
            futures = [pool.submit(_convert_part, source, root, k, options) for k in range(options.workers)]
        except BrokenProcessPool:  # a kept worker died idle and the pool noticed before _worker_pool did
            close_worker_pool()
            pool, queue = _worker_pool(options.workers)
            futures = [pool.submit(_convert_part, source, root, k, options) for k in range(options.workers)]
        while not all(f.done() for f in futures):
            try:
                update(queue.get(timeout=0.2))
            except queue_module.Empty:
                pass
        try:
            results = [f.result() for f in futures]
        except BrokenProcessPool as error:
            raise ConversionError(f"{description}: a conversion worker died ({error}); killed for memory? "
                                  "Nothing was written to the output; retry with fewer --workers") from None
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - the worker's traceback is in its __cause__
            raise ConversionError(f"{description}: a conversion worker failed ({type(error).__name__}: "
                                  f"{error}); nothing was written to the output") from error
    except BaseException:  # an error in a worker, SIGTERM, Ctrl-C: no worker may keep running
        _stop(pool)
        _pool = None
        raise
    while True:  # the last reports (a worker's queue is flushed by a thread of its own, maybe after its result)
        try:
            update(queue.get(timeout=0.05))
        except queue_module.Empty:
            break
    return results


def _merge(split_dir: Path) -> None:
    """One index.json over the workers' groups, in worker order (streaming's own log lines silenced)."""
    indexes = sorted(str(p) for p in split_dir.glob("part-*/index.json"))
    loggers = [logging.getLogger(), logging.getLogger("streaming")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        merge_index(indexes, str(split_dir))
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def read_stats(source: Source, parts: list[PartResult]) -> Stats:
    """What reading saw, over all workers: summed where each read its own part, else worker 0's (every worker
    read every document) with the ``empty`` counts summed (each renders only its own documents)."""
    if source.deals_whole_parts(len(parts)):
        total = Stats()
        for part in parts:
            total.skipped.update(part.stats.skipped)
            total.replaced_bytes += part.stats.replaced_bytes
            total.decoded_bytes.update(part.stats.decoded_bytes)
            total.replaced_by_file.update(part.stats.replaced_by_file)
            total.not_text_files += part.stats.not_text_files
    else:
        total = deepcopy(parts[0].stats)
        total.skipped["empty"] = sum(p.stats.skipped["empty"] for p in parts)
    total.skipped = +total.skipped
    total.not_text_files.sort()
    return total


def convert(streams: dict[str, Source], out: Path, options: Options, overwrite: bool = False,
            remote: str | None = None) -> dict[str, dict]:
    """Convert each source to ``out/<stream>/{train,val}`` (``out/{train,val}`` for the stream ``"."``), then
    upload ``out`` to ``remote`` (an object-store URI) when given.

    Returns the manifests by ``"<stream>/<split>"``.
    """
    out = Path(out)
    check_output(out, overwrite=overwrite, input_files=[f for source in streams.values() for f in source.files])
    previous = None if remote is None else check_remote_output(remote, overwrite=overwrite)
    tokenizer_info = describe(load_tokenizer(options.tokenizer), options.tokenizer)
    streams = {name: _opened(source) for name, source in streams.items()}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    start = time.monotonic()
    with written_atomically(out) as partial:
        manifests = _convert_streams(streams, partial, options, tokenizer_info, out.name)
    _summary(manifests, out, time.monotonic() - start)
    if remote is not None:
        upload_output(out, remote, previous)
    return manifests


def _opened(source: Source) -> Source:
    """A hub source opened once here (downloaded unless streaming; its revision resolved to a commit), so a
    dataset that does not load fails before any output or worker exists; a file source as it is."""
    if source.kind != "hub":
        return source
    from perceiver_stream.convert.hub import prepare

    return replace(source, hub_commit=prepare(source.hub, source.hub_split, source.streaming, source.text_field))


def _convert_streams(streams: dict[str, Source], partial: Path, options: Options, tokenizer_info: dict,
                     out_name: str) -> dict[str, dict]:
    manifests = {}
    for name, source in streams.items():
        root = partial / name
        parts = _run_workers(source, root, options, f"converting {name if name != '.' else out_name}")
        stats = read_stats(source, parts)
        _check_input_quality(name, stats, parts, options)
        for split in SPLITS:
            split_dir = root / split
            _merge(split_dir)
            counts = {key: sum(getattr(p, key)[split] for p in parts)
                      for key in ("documents", "tokens", "samples", "padding_tokens", "dropped_tokens")}
            manifests[os.path.normpath(f"{name}/{split}")] = write_manifest(
                split_dir, split=split, tokenizer_info=tokenizer_info, max_seq_len=options.max_seq_len,
                source=source.describe(), arguments=asdict(options), counts=counts, stats=stats,
                documents_converted=sum(sum(p.documents.values()) for p in parts))
    return manifests


def _check_input_quality(name: str, stats: Stats, parts: list[PartResult], options: Options) -> None:
    """Refuse input that is mostly not UTF-8 text, and input that gives no sample at all."""
    stream = "" if name == "." else f"stream {name}: "
    worst = stats.worst_files(options.max_replaced_fraction)
    if worst:
        named = ", ".join(f"{f} ({x:.1%})" for f, x in worst[:3]) + (f" and {len(worst) - 3} more" if len(worst) > 3
                                                                      else "")
        raise InputError(f"{stream}{len(worst)} input file(s) are not UTF-8 text beyond --max-replaced-fraction "
                         f"{options.max_replaced_fraction}: {named}. Convert them to UTF-8 (e.g. iconv -f latin1 "
                         "-t utf-8), remove them, or raise --max-replaced-fraction")
    if sum(p.samples["train"] + p.samples["val"] for p in parts) == 0:
        raise InputError(f"{stream}the input gives no samples (no text to convert; skipped documents: "
                         f"{dict(stats.skipped) or 'none'}); check --input and --format")


def _summary(manifests: dict[str, dict], out: Path, seconds: float) -> None:
    tokens = sum(m["counts"]["tokens"] for m in manifests.values())
    samples = ", ".join(f"{key} {m['counts']['samples']:,}" for key, m in manifests.items())
    skipped: Counter = Counter()
    replaced = 0
    for key, manifest in manifests.items():
        if key.endswith("train"):  # each stream's source counts are in both of its splits' manifests
            skipped.update(manifest["source_counts"]["documents_skipped"])
            replaced += manifest["source_counts"]["undecodable_bytes_replaced"]
    skipped_text = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
    print(f"converted {tokens:,} tokens in {seconds:.1f}s ({tokens / max(seconds, 1e-9):,.0f} tokens/s) "
          f"-> samples: {samples}; skipped documents: {skipped_text}; undecodable bytes replaced: {replaced:,}; "
          f"output: {out}")
