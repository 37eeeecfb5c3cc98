"""What each stage of the pretrained encoder holds of a task, against the same stages at the initialisation: where
the words a classifier needs are kept, and where a one-query readout loses them.

experiments/downstream.py finds ours' frozen encoder well above its initialisation on BBC News topics but only a few
points above it on Rotten Tomatoes sentiment, far under a bag of pieces with no network at all. Sentiment hangs on a
few words; this asks whether the latents still hold them. For ours' pretrained checkpoint (``--weights``: the
``trained.pt`` of a directory experiments/downstream.py or experiments/learning.py printed as ``ours_checkpoints``,
e.g. ``runs/experiments-cache/pretrained-KEY/trained.pt`` of ``--equal-steps``) and for the initial one beside it
(``initial.pt``, or ``--initial``), every document of a task goes through the frozen MLM once, in the shape the
checkpoint records, and a logistic regression (``C`` chosen on a fifth of the training split, as for the bag of
pieces) is fitted on each stage's pooled output:

- ``token_embeddings``: the input pieces' embeddings (no position), mean and max over the document;
- ``cross_attention``: the 64 latents after the encoder's cross-attention, mean and max over the latents;
- ``latent_layer_K``: the latents after self-attention layer K (the last is what the classifier's decoder reads);
- ``decoded``: the MLM decoder's output at every document position (its queries read each position back out of the
  latents), mean and max over the document;
- ``reconstructed_pieces``: the bag of the pieces the MLM predicts at the document's positions (its argmax), the same
  sparse features as the bag of pieces; ``copy_accuracy`` is how often that prediction is the input piece.

Prints a line per task and encoder, and a last-line JSON object: ``{task}_{ours,random}_{stage}`` (val accuracy),
``{task}_{ours,random}_copy_accuracy``, ``{task}_bag_of_pieces``, ``{task}_majority``, ``pretrain_batches``.

    python -m experiments.encoder_stages --weights runs/experiments-cache/pretrained-KEY/trained.pt [--tasks rt,bbc]
        [--legs ours,random] [--initial PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from experiments.corpora import CACHE, TOKENIZER, require_shared
from experiments.pretraining import INITIAL, mlm_from_checkpoint
from experiments.tasks import Split, bag_of_pieces, labelled_task, sparse_bag
from perceiver_stream.checkpoint import CheckpointError, read_checkpoint
from perceiver_stream.data.format import is_word_token
from perceiver_stream.model import PerceiverMLM
from perceiver_stream.probe import logistic_regression, mean_and_max, standardised

PROG = "python -m experiments.encoder_stages"
BATCH = 128


@torch.no_grad()
def stages(model: PerceiverMLM, split: Split) -> tuple[dict[str, torch.Tensor], float]:
    """Every stage's pooled features of each document of ``split`` (the pieces predicted as a sparse bag), and the
    fraction of the documents' word positions whose predicted piece is the input piece."""
    pooled: dict[str, list[torch.Tensor]] = {}
    predicted_rows, copied, words = [], 0, 0

    def add(name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        pooled.setdefault(name, []).append(mean_and_max(values, mask))

    # the latents after the encoder's cross-attention and after each self-attention call, as ``encode`` runs them
    latent_stages: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _module, _inputs, output: latent_stages.append(output))
             for layer in (model.encoder.cross_attention, *model.encoder.self_attention)]
    try:
        for start in range(0, len(split.labels), BATCH):
            rows = np.arange(start, min(start + BATCH, len(split.labels)))
            batch = split.batch(rows)
            ids, real = batch["input_ids"], batch["attention_mask"].bool()
            word = torch.from_numpy(is_word_token(split.types[rows][:, :ids.shape[1]]))
            add("token_embeddings", model.input_adapter.token_embedding(ids), real)
            latent_stages.clear()
            latents, _ = model.encode(ids, batch["attention_mask"])
            add("cross_attention", latent_stages[0])
            for layer, output in enumerate(latent_stages[1:], start=1):
                add(f"latent_layer_{layer}", output)
            positions = torch.arange(ids.shape[1]).expand(len(rows), -1)
            decoded = model.decoder(latents, positions)
            add("decoded", decoded, real)
            prediction = model.logits(decoded).argmax(-1)
            copied += int((prediction == ids)[word].sum())
            words += int(word.sum())
            predicted_rows.extend(np.unique(p[r].numpy()) for p, r in zip(prediction, real, strict=True))
    finally:
        for hook in hooks:
            hook.remove()
    features = {name: torch.cat(parts) for name, parts in pooled.items()}
    features["reconstructed_pieces"] = sparse_bag(predicted_rows, model.config.vocab_size)
    return features, copied / words


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True,
                        help="ours' pretrained checkpoint (trained.pt of experiments/downstream.py or learning.py)")
    parser.add_argument("--initial", type=Path, default=None,
                        help=f"the initialisation's checkpoint (default: {INITIAL} beside --weights)")
    parser.add_argument("--tasks", default="rt,bbc")
    parser.add_argument("--legs", default="ours,random",
                        help="ours, random or both (snapshots of one pretraining share the initialisation)")
    parser.add_argument("--seed", type=int, default=0, help="which fifth of the training split chooses C")
    parser.add_argument("--cache", type=Path, default=CACHE, help="the converted tasks (shared with downstream)")
    args = parser.parse_args()
    args.legs = args.legs.split(",")
    args.initial = args.initial or args.weights.with_name(INITIAL)
    if not args.legs or not set(args.legs) <= {"ours", "random"}:
        parser.error(f"--legs={','.join(args.legs)}: expected ours, random or ours,random")
    for flag, path in (("--weights", args.weights), ("--initial", args.initial)):
        if not path.is_file() and (flag == "--weights" or "random" in args.legs):
            parser.error(f"{flag} {path}: no such file (python -m experiments.downstream --equal-steps N writes "
                         "runs/experiments-cache/pretrained-KEY/trained.pt and initial.pt)")
    return args


def main() -> None:
    args = parse_args()
    require_shared(PROG)
    checkpoints = {"ours": args.weights, "random": args.initial}
    try:
        models = {name: mlm_from_checkpoint(checkpoints[name]) for name in args.legs}
        batches = int(read_checkpoint(args.weights)["timestamp"]["Timestamp"]["batch"])  # Composer's serialisation
    except CheckpointError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    config = next(iter(models.values())).config
    result = {"weights": str(args.weights), "pretrain_batches": batches}
    for task_name in args.tasks.split(","):
        task = labelled_task(task_name, args.cache, str(TOKENIZER), config.max_seq_len)
        classes = len(task.labels)
        result[f"{task_name}_majority"] = round(task.majority, 4)
        result[f"{task_name}_bag_of_pieces"] = round(bag_of_pieces(task, config.vocab_size, args.seed)["accuracy"], 4)
        for name, model in models.items():
            (train_features, copy_train), (val_features, _) = stages(model, task.train), stages(model, task.val)
            found = {"copy_accuracy": round(copy_train, 4)}
            for stage in train_features:
                x_train, x_val = standardised(train_features[stage], val_features[stage])
                found[stage] = round(logistic_regression(x_train, task.train.labels, x_val, task.val.labels, classes,
                                                         args.seed)["accuracy"], 4)
            print(json.dumps({task_name: {name: found}}), flush=True)
            result.update({f"{task_name}_{name}_{key}": value for key, value in found.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
