"""What each stage of the pretrained encoder holds of a task, against the same stages at the initialisation: where
the words a classifier needs are kept, and where a one-query readout loses them.

``bench/downstream.py`` finds ours' frozen encoder well above its initialisation on BBC News topics but only a few
points above it on Rotten Tomatoes sentiment, far under a bag of pieces with no network at all. Sentiment hangs on a
few words; this asks whether the latents still hold them. For ours' cached pretrained weights (``--weights``: a
``pretrained-*.pt`` of ``bench/downstream.py --equal-steps``, which also holds the initial weights) and for those
initial weights, every document of a task goes through the frozen MLM once, and a logistic regression (``C`` chosen on
a fifth of the training split, as for the bag of pieces) is fitted on each stage's pooled output:

- ``token_embeddings``: the input pieces' embeddings (no position), mean and max over the document;
- ``cross_attention``: the 64 latents after the encoder's cross-attention, mean and max over the latents;
- ``latent_layer_K``: the latents after self-attention layer K (the last is what the classifier's decoder reads);
- ``decoded``: the MLM decoder's output at every document position (its queries read each position back out of the
  latents), mean and max over the document;
- ``reconstructed_pieces``: the bag of the pieces the MLM predicts at the document's positions (its argmax), the same
  sparse features as the bag of pieces; ``copy_accuracy`` is how often that prediction is the input piece.

Prints a line per task and encoder, and a last-line JSON object: ``{task}_{ours,random}_{stage}`` (val accuracy),
``{task}_{ours,random}_copy_accuracy``, ``{task}_bag_of_pieces``, ``{task}_majority``, ``pretrain_batches``.

    python bench/encoder_stages.py --weights runs/bench-learning-cache/pretrained-KEY.pt [--tasks rt,bbc]
        [--legs ours,random]
        [--set KEY=VALUE ...]   (the model settings the weights were pretrained with, if not bench/learning.py's)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from downstream import Split, bag_of_pieces, labelled_task, sparse_bag
from learning import DEFAULTS, REPO, SHARED
from omegaconf import OmegaConf

from perceiver_stream.config import build
from perceiver_stream.data.format import is_word_token
from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.probe import logistic_regression, mean_and_max, standardised

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True,
                        help="a pretrained-*.pt of bench/downstream.py --equal-steps (ours' weights and the initial)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="the pretraining's settings")
    parser.add_argument("--tasks", default="rt,bbc")
    parser.add_argument("--legs", default="ours,random",
                        help="ours, random or both (snapshots of one pretraining share the initialisation)")
    parser.add_argument("--seed", type=int, default=0, help="which fifth of the training split chooses C")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-learning-cache")
    args = parser.parse_args()
    if not args.legs or not set(args.legs.split(",")) <= {"ours", "random"}:
        parser.error(f"--legs={args.legs}: expected ours, random or ours,random")
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file (bench/downstream.py --equal-steps N writes one)")
    settings = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(args.set)))
    saved = torch.load(args.weights, weights_only=True)
    result = {"weights": str(args.weights), "pretrain_batches": saved["batches"]}
    tokenizer = str(SHARED / "tokenizers" / "xlnet-base-cased")
    for task in args.tasks.split(","):
        train, val, labels = labelled_task(task, args.cache, tokenizer, settings["model"]["max_seq_len"])
        classes = len(labels)
        result[f"{task}_majority"] = round(float(np.bincount(val.labels).max() / len(val.labels)), 4)
        result[f"{task}_bag_of_pieces"] = round(
            bag_of_pieces(train, val, settings["model"]["vocab_size"], classes, args.seed)["accuracy"], 4)
        for name in args.legs.split(","):
            weights = saved["weights" if name == "ours" else "initial"]
            model = PerceiverMLM(build(PerceiverMLMConfig, settings["model"], "model."))
            model.load_state_dict(weights)
            model.eval()
            (train_features, copy_train), (val_features, _) = stages(model, train), stages(model, val)
            found = {"copy_accuracy": round(copy_train, 4)}
            for stage in train_features:
                x_train, x_val = standardised(train_features[stage], val_features[stage])
                found[stage] = round(logistic_regression(x_train, train.labels, x_val, val.labels, classes,
                                                         args.seed)["accuracy"], 4)
            print(json.dumps({task: {name: found}}), flush=True)
            result.update({f"{task}_{name}_{key}": value for key, value in found.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
