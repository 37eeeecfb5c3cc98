"""Export a training checkpoint as a ``transformers`` ``PerceiverForMaskedLM`` directory with its tokenizer.

    python -m perceiver_stream.export CHECKPOINT --config yamls/mlm_tiny.yaml [key=value ...] --out DIR

``transformers.pipeline("fill-mask", model=DIR)`` then works on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer

from perceiver_stream.config import build, load
from perceiver_stream.model import PerceiverMLM, PerceiverMLMConfig
from perceiver_stream.model.hf import to_hf
from perceiver_stream.train.config import TrainConfig


def load_checkpoint_model(checkpoint: str | Path, config: PerceiverMLMConfig) -> PerceiverMLM:
    """Our model with the weights of a Composer checkpoint (``state.model`` keys prefixed ``model.``)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]
    weights = {key.removeprefix("model.").replace("._checkpoint_wrapped_module", ""): value
               for key, value in state.items()}
    model = PerceiverMLM(config)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def export(checkpoint: str | Path, cfg: TrainConfig, out: str | Path) -> Path:
    out = Path(out)
    model = load_checkpoint_model(checkpoint, cfg.model)
    to_hf(model).save_pretrained(out)
    # only what PerceiverForMaskedLM takes (pipelines pass every model input the tokenizer names)
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer, model_input_names=["input_ids", "attention_mask"])
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a Composer checkpoint file (e.g. .../latest-rank0.pt)")
    parser.add_argument("--config", required=True, help="the yaml the checkpoint was trained with")
    parser.add_argument("overrides", nargs="*", help="the same key=value overrides as in training")
    parser.add_argument("--out", required=True)
    args = parser.parse_intermixed_args(argv)
    print(export(args.checkpoint, build(TrainConfig, load(args.config, args.overrides)), args.out))


if __name__ == "__main__":
    main()
