"""Export of a training checkpoint to transformers: the same logits, and a working fill-mask pipeline."""

from __future__ import annotations

import torch
from transformers import PerceiverForMaskedLM, pipeline

from perceiver_stream.config import build, load
from perceiver_stream.export import export, load_checkpoint_model
from perceiver_stream.model.composer_model import ComposerPerceiverMLM
from perceiver_stream.train.config import TrainConfig
from tests.conftest import REPO, shared_path


def test_exported_model_has_the_native_logits_and_fills_masks(tmp_path):
    tokenizer = shared_path("tokenizers/xlnet-base-cased")
    cfg = build(TrainConfig, load(REPO / "yamls" / "mlm_quickstart.yaml", [
        f"data.tokenizer={tokenizer}", "model.vocab_size=32000", "model.activation_checkpointing=true"]))
    torch.manual_seed(0)
    composer_model = ComposerPerceiverMLM(cfg.model, mask_token_id=6)  # checkpoint-wrapped layers, as in training
    checkpoint = tmp_path / "ep0-ba10-rank0.pt"
    torch.save({"state": {"model": composer_model.state_dict()}}, checkpoint)

    native = load_checkpoint_model(checkpoint, cfg.model)
    out = export(checkpoint, cfg, tmp_path / "hf")
    hf = PerceiverForMaskedLM.from_pretrained(out).eval()
    input_ids = torch.randint(7, 32000, (2, 30), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 20:] = 0
    real = attention_mask.bool()
    with torch.no_grad():
        # transformers decodes all max_seq_len output queries; the first 30 are the inputs' positions
        hf_logits = hf(inputs=input_ids, attention_mask=attention_mask).logits[:, :30]
        torch.testing.assert_close(hf_logits[real],
                                   native(input_ids, attention_mask)[real], atol=1e-5, rtol=1e-5)

    fill = pipeline("fill-mask", model=str(out), device=-1)
    predictions = fill(f"The capital of France is {fill.tokenizer.mask_token}.", top_k=3)
    assert len(predictions) == 3 and all(0.0 <= p["score"] <= 1.0 for p in predictions)
