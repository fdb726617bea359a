"""What "layer K" means, defined here rather than by whichever transformers version is installed.

    layer 0   the input to the first transformer block (after the positional conv, and after the
              encoder LayerNorm in post-LN models such as HuBERT/wav2vec2 Base)
    layer K   the output of transformer block K (1 <= K <= num_hidden_layers), the residual stream
              as that block returns it: never the encoder's final LayerNorm of pre-LN
              ("stable layer norm") models, which transformers 4.x folds into hidden_states[-1]
              and 5.x does not.

We read these with hooks on the blocks themselves, so `output_hidden_states` (whose last entry
changed meaning between versions) is never used, and no layer we were not asked for is kept.
The captures live in a ContextVar, so threads sharing one model never see each other's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

#: Recorded in every cache spec; bump when the definition above changes.
LAYER_DEFINITION = "block-io-v1"

_CAPTURE: ContextVar[dict[int, torch.Tensor] | None] = ContextVar("distilcache_layer_capture", default=None)
_WANTED: ContextVar[frozenset[int]] = ContextVar("distilcache_layer_wanted", default=frozenset())


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a transformers speech encoder (HuBERT, wav2vec2, WavLM, data2vec-audio...)."""
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise TypeError(f"{type(model).__name__} has no encoder.layers")
    return layers


def install_layer_hooks(model: nn.Module) -> None:
    """Hooks that copy layer K into the capture of the forward running in this thread (once per model)."""
    if getattr(model, "_distilcache_hooks", False):
        return

    def keep(k: int, value) -> None:
        capture = _CAPTURE.get()
        if capture is not None and k in _WANTED.get():
            capture[k] = value[0] if isinstance(value, tuple) else value

    layers = blocks(model)
    layers[0].register_forward_pre_hook(lambda _m, args, kwargs: keep(0, args[0] if args else kwargs["hidden_states"]),
                                        with_kwargs=True)
    for k, block in enumerate(layers, start=1):
        block.register_forward_hook(lambda _m, _args, out, k=k: keep(k, out))
    model._distilcache_hooks = True


@contextmanager
def capture_layers(layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within this block, the hooked model fills the returned dict with the wanted layers ([batch, frames, dim])."""
    out: dict[int, torch.Tensor] = {}
    t1, t2 = _CAPTURE.set(out), _WANTED.set(frozenset(layers))
    try:
        yield out
    finally:
        _CAPTURE.reset(t1)
        _WANTED.reset(t2)
