"""Export of a training checkpoint to transformers: the same logits, a working fill-mask pipeline, the checkpoint
alone as input, and one-line errors for every checkpoint that cannot be exported."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, PerceiverForMaskedLM, pipeline

from perceiver_stream.config import build, load, to_dict
from perceiver_stream.data.tokenizer import fingerprint
from perceiver_stream.export import export, load_checkpoint_model, main
from perceiver_stream.model.composer_model import ComposerPerceiverMLM
from perceiver_stream.train.config import TrainConfig
from tests.conftest import REPO, shared_path

QUICKSTART = REPO / "yamls" / "mlm_quickstart.yaml"


def overrides(tokenizer: str = "xlnet-base-cased") -> list[str]:
    return [f"data.tokenizer={shared_path(f'tokenizers/{tokenizer}')}", "model.vocab_size=32000",
            "model.activation_checkpointing=true"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint laid out as Composer writes it, with the run description training stores."""
    cfg = build(TrainConfig, load(QUICKSTART, overrides()))
    torch.manual_seed(0)
    composer_model = ComposerPerceiverMLM(cfg.model, mask_token_id=6)  # checkpoint-wrapped layers, as in training
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    path = tmp_path_factory.mktemp("export") / "ep0-ba10-rank0.pt"
    description = {"config": to_dict(cfg), "tokenizer_fingerprint": fingerprint(tokenizer)}
    torch.save({"state": {"model": composer_model.state_dict(), "callbacks": {"RunDescription": description}}}, path)
    return path, cfg


def test_exported_model_has_the_native_logits_and_fills_masks(checkpoint, tmp_path):
    path, cfg = checkpoint
    native = load_checkpoint_model(path, cfg.model)
    out = export(path, tmp_path / "hf")  # the checkpoint alone
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
    sentence = f"The capital of France is {fill.tokenizer.mask_token}."
    predictions = fill(sentence, top_k=3)
    encoded = fill.tokenizer(sentence, return_tensors="pt")  # as the pipeline encodes it
    with torch.no_grad():
        logits = native(encoded["input_ids"], encoded["attention_mask"])[0]
    position = int((encoded["input_ids"][0] == fill.tokenizer.mask_token_id).nonzero())
    top = logits[position].softmax(-1).topk(3)  # ours: the pipeline must show our model's predictions
    assert [p["token"] for p in predictions] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([p["score"] for p in predictions]), top.values, atol=1e-5, rtol=1e-4)


def error_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perceiver-export: error: ") and "\n" not in err
    return err


def test_checkpoints_that_cannot_be_exported_are_one_line_errors(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "hf"
    assert f"{tmp_path / 'none.pt'}: no such checkpoint" in error_of(capsys, tmp_path / "none.pt", "--out", out)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100_000])
    assert f"{truncated}: cannot be read as a checkpoint" in error_of(capsys, truncated, "--out", out)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert f"{text}: cannot be read as a checkpoint" in error_of(capsys, text, "--out", out)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    assert "other.pt: not a Composer checkpoint (no state.model)" in error_of(capsys, tmp_path / "other.pt",
                                                                            "--out", out)
    assert "its weights do not fit the configured model (size mismatch for" in error_of(
        capsys, path, "--out", out, "model.num_latent_channels=64")
    assert (f"{path}: transformers' PerceiverForMaskedLM cannot express this model; it needs "
            "['decoder.num_cross_attention_heads == 8']") in error_of(capsys, path, "--out", out,
                                                                      "model.decoder.num_cross_attention_heads=4")
    assert "is not the tokenizer" in error_of(capsys, path, "--out", out,
                                              f"data.tokenizer={shared_path('tokenizers/bert-base-uncased')}",
                                              "model.vocab_size=32000")
    (tmp_path / "sharded").mkdir()
    assert "a directory without .metadata" in error_of(capsys, tmp_path / "sharded", "--out", out)
    bare = tmp_path / "bare.pt"
    state = torch.load(path, weights_only=False)
    del state["state"]["callbacks"]
    torch.save(state, bare)
    assert "does not record its run configuration" in error_of(capsys, bare, "--out", out)
    main([str(bare), "--out", str(out), "--config", str(QUICKSTART), *overrides()])  # --config stands in
    assert (out / "config.json").exists()


def test_a_checkpoint_carries_its_tokenizer_to_another_machine(tmp_path, monkeypatch):
    """Trained with a relative data.tokenizer path (as README's commands are), exported from another directory
    where no such path exists: the tokenizer stored in the checkpoint is used, the same one bit for bit."""
    from perceiver_stream.checkpoint import tokenizer_files

    relative = "../shared/tokenizers/xlnet-base-cased"
    assert shared_path("tokenizers/xlnet-base-cased") == (REPO / relative).resolve()
    cfg = build(TrainConfig, load(QUICKSTART, [f"data.tokenizer={relative}", "model.vocab_size=32000"]))
    monkeypatch.chdir(REPO)
    tokenizer = AutoTokenizer.from_pretrained(relative)
    torch.manual_seed(0)
    model = ComposerPerceiverMLM(cfg.model, mask_token_id=6)
    description = {"config": to_dict(cfg), "tokenizer_fingerprint": fingerprint(tokenizer),
                   "tokenizer_files": tokenizer_files(tokenizer)}
    path = tmp_path / "ep0-ba10-rank0.pt"
    torch.save({"state": {"model": model.state_dict(), "callbacks": {"RunDescription": description}}}, path)
    elsewhere = tmp_path / "laptop"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = export(path, "hf")
    assert fingerprint(AutoTokenizer.from_pretrained(out)) == fingerprint(tokenizer)
    assert (out / "spiece.model").exists()
    with pytest.raises(Exception, match="cannot load a tokenizer"):  # an explicit path is still taken as given
        export(path, "hf2", overrides=[f"data.tokenizer={relative}"])
