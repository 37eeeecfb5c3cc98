"""Training FLOPs of a batch, for Composer's SpeedMonitor MFU."""

from __future__ import annotations

from perceiver_stream.model.config import PerceiverConfig, PerceiverMLMConfig


def _attention_layer_macs(nq: float, nkv: int, cq: int, ckv: int, qk: int, v: int, widening: int) -> float:
    """Multiply-accumulates of one pre-norm attention layer + MLP (queries nq x cq, keys/values nkv x ckv)."""
    projections = nq * cq * qk + nkv * ckv * (qk + v) + nq * v * cq
    attention = nq * nkv * (qk + v)
    mlp = 2 * nq * cq * cq * widening
    return projections + attention + mlp


def _encoder_macs(config: PerceiverConfig, seq_len: int) -> float:
    """Multiply-accumulates of one sample through the encoder's cross-attention and self-attention layers."""
    enc = config.encoder
    n, d, c = config.num_latents, config.num_latent_channels, enc.num_input_channels
    cross_qk = enc.num_cross_attention_qk_channels or d
    self_qk = enc.num_self_attention_qk_channels or d
    macs = _attention_layer_macs(
        n, seq_len, d, c, cross_qk, enc.num_cross_attention_v_channels or cross_qk,
        enc.cross_attention_widening_factor,
    )
    return macs + enc.num_self_attention_blocks * enc.num_self_attention_layers_per_block * _attention_layer_macs(
        n, n, d, d, self_qk, enc.num_self_attention_v_channels or self_qk, enc.self_attention_widening_factor
    )


def training_flops(
    config: PerceiverMLMConfig, batch_size: int, seq_len: int, num_predicted: int, num_decoded: int | None = None
) -> int:
    """Training FLOPs (forward + backward) of a batch of ``seq_len``-token samples with ``num_predicted``
    labels in total, of which the decoder runs ``num_decoded`` (each row padded to the batch's most labels;
    default ``num_predicted``) and the output head exactly ``num_predicted``.

    ``6 * MACs``: every matmul costs 2 FLOPs per multiply-accumulate in forward and twice that in backward.
    MACs are counted for (N latents x D, L inputs x C, P predicted positions, V vocabulary):

    - encoder cross-attention: ``N*D*qk + L*C*(qk+v) + N*v*D + N*L*(qk+v) + 2*N*D*D*w``
    - each of the ``blocks * layers`` self-attention layers: the same with ``L = N``, ``C = D``
    - decoder cross-attention for the P decoded positions only (training decodes nothing else):
      ``P*C*qk + N*D*(qk+v) + P*v*C + P*N*(qk+v) + 2*P*C*C*w``
    - output head, for the labelled positions: ``P*C*V``

    Embedding look-ups, norms and softmax are ignored, as is customary for MFU. Every term is per sample
    except those in P, so the batch total is ``batch_size`` times a sample with ``P / batch_size`` labels.
    """
    decoded = (num_predicted if num_decoded is None else num_decoded) / batch_size
    dec = config.decoder
    n, d, c = config.num_latents, config.num_latent_channels, config.encoder.num_input_channels
    dec_qk = dec.num_cross_attention_qk_channels or c
    macs = _encoder_macs(config, seq_len)
    macs += _attention_layer_macs(
        decoded, n, c, d, dec_qk, dec.num_cross_attention_v_channels or dec_qk,
        dec.cross_attention_widening_factor,
    )
    macs += num_predicted / batch_size * c * config.vocab_size
    return round(6 * macs * batch_size)


def classifier_training_flops(config: PerceiverConfig, batch_size: int, seq_len: int, *,
                              frozen_encoder: bool = False) -> int:
    """Training FLOPs of a classifier's batch: the encoder as in ``training_flops`` (forward only, ``2 * MACs``,
    when frozen: no backward runs through it), and the classification decoder's one query
    (``_attention_layer_macs`` with one query of the latent width) plus its linear layer."""
    dec, d = config.decoder, config.num_latent_channels
    dec_qk = dec.num_cross_attention_qk_channels or d
    decoder = _attention_layer_macs(1, config.num_latents, d, d, dec_qk, dec.num_cross_attention_v_channels or dec_qk,
                                    dec.cross_attention_widening_factor) + d * (config.num_classes or 2)
    return round(((2 if frozen_encoder else 6) * _encoder_macs(config, seq_len) + 6 * decoder) * batch_size)
