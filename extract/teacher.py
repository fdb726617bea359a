"""The teacher: loading (safely), its identity for the cache spec, and exact batched forwards.

Batched forwards are exact (DESIGN invariant 1): see extract/exact.py.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

# oneDNN (CPU) keeps compiled kernels per input shape; every utterance has a new length, so its
# default cache of 1024 grew RSS with the corpus (measured +50% for 4x the files); 32 keeps it flat.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
import torch  # noqa: E402 - after the oneDNN setting
from torch import nn

from extract.audio import MONO, RESAMPLER, normalize
from extract.errors import ExtractError
from extract.exact import conv_lengths, install_masked_groupnorm, set_valid_lengths
from store import FORMAT_VERSION

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config keys that say nothing about the forward pass; dropped so hub and local copies match.
_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "return_dict",
             "output_hidden_states", "output_attentions", "_attn_implementation_autoset", "_commit_hash"}


def weights_digest(model: nn.Module) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes): equal weights, equal digest, however saved."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


@dataclass
class Teacher:
    model: nn.Module
    name: str
    revision: str | None
    sample_rate: int
    do_normalize: bool
    device: torch.device
    compute_dtype: str = "float32"
    digest: str = field(default="", repr=False)

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hop(self) -> int:
        return int(np.prod(self.config.conv_stride))

    @property
    def window(self) -> int:
        r = 1
        for k, s in zip(reversed(self.config.conv_kernel), reversed(self.config.conv_stride), strict=True):
            r = (r - 1) * s + k
        return r

    def num_frames(self, samples: int) -> int:
        return max(0, int(conv_lengths(samples, self.config.conv_kernel, self.config.conv_stride)))

    def check_layers(self, layers: list[int]) -> list[int]:
        bad = [k for k in layers if not 0 <= k <= self.num_layers]
        if bad or not layers:
            raise ExtractError(
                f"--layers {','.join(map(str, layers))}: teacher {self.name} has layers 0..{self.num_layers} "
                "(0 = input to layer 1, K = output of layer K)"
            )
        return sorted(set(layers))

    def spec(self, layers: list[int], storage_dtype: str) -> dict:
        config = {k: v for k, v in self.config.to_dict().items() if k not in _VOLATILE and not k.startswith("_")}
        return {
            "format_version": FORMAT_VERSION,
            "teacher": {"digest": self.digest, "class": type(self.model).__name__, "config": config},
            "layers": self.check_layers(layers),
            "dim": int(self.config.hidden_size),
            "compute_dtype": self.compute_dtype,
            "storage_dtype": storage_dtype,
            "preprocessing": {"sample_rate": self.sample_rate, "mono": MONO, "resampler": RESAMPLER,
                              "normalize": self.do_normalize, "batching": "exact-masked-groupnorm-v1"},
            "frame": {"window": self.window, "hop": self.hop},
        }

    @torch.inference_mode()
    def forward(self, waves: list[np.ndarray], layers: list[int]) -> list[dict[int, np.ndarray]]:
        """Hidden states `layers` for each wave, each exactly as if it were run alone."""
        lengths = [len(w) for w in waves]
        batch = torch.zeros(len(waves), max(lengths))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(normalize(w) if self.do_normalize else w)
        lens = torch.tensor(lengths)
        mask = (torch.arange(batch.shape[1])[None, :] < lens[:, None]).long()
        set_valid_lengths(self.model, lens.to(self.device))
        try:
            with torch.autocast(self.device.type, dtype=DTYPES[self.compute_dtype], enabled=self.compute_dtype != "float32"):
                out = self.model(batch.to(self.device), attention_mask=mask.to(self.device), output_hidden_states=True)
        finally:
            set_valid_lengths(self.model, None)
        frames = [self.num_frames(n) for n in lengths]
        picked = {k: out.hidden_states[k].float().cpu().numpy() for k in layers}
        return [{k: picked[k][i, : frames[i]] for k in layers} for i in range(len(waves))]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExtractError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    return torch.device(device)


def load_teacher(name: str, revision: str | None = None, device: str = "auto", compute_dtype: str = "float32",
                 allow_pickle: bool = False) -> Teacher:
    """Any transformers speech encoder with a conv feature extractor (HuBERT, wav2vec2, WavLM, data2vec-audio)."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one on stderr

    if compute_dtype not in DTYPES:
        raise ExtractError(f"--dtype {compute_dtype}: choose one of {', '.join(DTYPES)}")
    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - hub/network/parse errors all mean "cannot load this teacher"
        where = "directory" if os.path.isdir(name) else "hub name (is the hub reachable? set HF_HUB_OFFLINE=1 to use the local cache)"
        raise ExtractError(f"--teacher {name}: cannot load its config as a {where}: {str(e).splitlines()[0][:160]}") from None
    if not hasattr(config, "conv_stride") or not hasattr(config, "num_hidden_layers"):
        raise ExtractError(f"--teacher {name}: a {config.model_type} model is not a speech encoder with a conv feature extractor")
    try:
        model = AutoModel.from_pretrained(name, revision=revision, config=config, use_safetensors=not allow_pickle,
                                          trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        hint = " (no safetensors weights: pass --allow-pickle if you trust it)" if "safetensors" in str(e).lower() else ""
        raise ExtractError(f"--teacher {name}: cannot load its weights{hint}: {str(e).splitlines()[0][:160]}") from None
    if not hasattr(model, "feature_extractor") or not hasattr(model.feature_extractor, "conv_layers"):
        raise ExtractError(f"--teacher {name}: {type(model).__name__} has no conv feature extractor; not a speech encoder")
    try:
        fe = AutoFeatureExtractor.from_pretrained(name, revision=revision)
        rate, do_norm = int(fe.sampling_rate), bool(getattr(fe, "do_normalize", False))
    except Exception:  # noqa: BLE001 - no preprocessor_config.json: the HuBERT/wav2vec2 defaults
        rate, do_norm = 16000, False
    model.eval()
    digest = weights_digest(model)
    install_masked_groupnorm(model)
    dev = resolve_device(device)
    if dev.type == "cuda" and compute_dtype == "float32":
        # fp32 means fp32: TF32 convolutions/matmuls would break "exact to 1e-4" and change the targets
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return Teacher(model.to(dev), name, revision, rate, do_norm, dev, compute_dtype, digest)
