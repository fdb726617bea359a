"""A teacher's identity for the cache spec: its weights digest and the config keys that change its forward pass.

Only keys that change what an eval-mode forward computes are hashed. transformers 4.x writes ~40
generation and training settings (top_k, num_beams, dropout, SpecAugment...) that 5.x does not;
hashing them gave bit-identical targets two fingerprints, and every cache was missed after an
upgrade. The list is documented in docs/cache-format.md; shapes are covered by the digest anyway.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

#: Config keys hashed into the fingerprint (those present in a teacher's config).
FORWARD_KEYS = (
    "model_type",
    # transformer
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
    "do_stable_layer_norm",
    # conv feature extractor and projection
    "feat_extract_norm", "feat_extract_activation", "conv_dim", "conv_stride", "conv_kernel", "conv_bias",
    "num_feat_extract_layers", "feat_proj_layer_norm",
    # positional embedding
    "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "conv_pos_kernel_size", "conv_pos_batch_norm",
    "position_embeddings_type", "rotary_embedding_base", "max_source_positions", "conv_depthwise_kernel_size",
    # WavLM's relative position bias
    "num_buckets", "max_bucket_distance",
    # adapters on top of the encoder
    "add_adapter", "adapter_kernel_size", "adapter_stride", "num_adapter_layers", "output_hidden_size",
)


def forward_config(config: dict) -> dict:
    """The hashed part of a teacher config: FORWARD_KEYS that it has, as plain JSON values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k in FORWARD_KEYS}


def weights_digest(model: nn.Module) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes): equal weights, equal digest, however saved."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()
