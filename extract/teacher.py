"""The teacher: loading (safely, in fp32), its identity for the cache spec, and exact batched forwards.

Batched forwards are exact (DESIGN invariant 1): see extract/exact.py, and extract/probe.py for
the per-teacher check. What "layer K" means is defined in extract/layers.py.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

# oneDNN (CPU) keeps compiled kernels per input shape; every utterance has a new length, so its
# default cache of 1024 grew RSS with the corpus (measured +50% for 4x the files); 32 keeps it flat.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")

import torch  # noqa: E402 - after the oneDNN setting
from torch import nn

from extract.audio import MONO, RESAMPLER, normalize
from extract.errors import ExtractError
from extract.exact import conv_lengths, install_masked_groupnorm, valid_lengths
from extract.identity import forward_config, weights_digest
from extract.known_teacher import KnownTeacher
from extract.layers import LAYER_DEFINITION, capture_layers, install_layer_hooks


def _cap_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread that allocates (decoders, writer, torch's pool) its own arena, and freed buffers of
    ever-new sizes stay in them: peak RSS grew 1.13x for 4x the files (654 -> 740 MB); with 2 arenas, flat
    (bench.extract_bench --rss-only: 0.97-1.05x over two runs). MALLOC_ARENA_MAX=2 set at run time; a no-op off glibc."""
    import ctypes
    import ctypes.util

    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, n)  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        pass


_cap_malloc_arenas()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def exact_fp32(device: torch.device, compute_dtype: str) -> None:
    """The one place that owns "fp32 means fp32": TF32 matmuls/convolutions would break "exact to 1e-4".

    Called whenever a teacher is placed on a device (extraction, and online targets in training)."""
    if compute_dtype == "float32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


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
    # (stamp of its files, when it was read) while a run has not yet remembered it (extract.known_teacher.remember)
    unremembered: tuple | None = field(default=None, repr=False)
    _known: KnownTeacher | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hop(self) -> int:
        return self.known().hop

    @property
    def window(self) -> int:
        return self.known().window

    def to(self, device: torch.device | str) -> Teacher:
        """Move to `device`, keeping fp32 exact there (TF32 off)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        exact_fp32(self.device, self.compute_dtype)
        return self

    def num_frames(self, samples: int) -> int:
        return max(0, int(conv_lengths(samples, self.config.conv_kernel, self.config.conv_stride)))

    def check_layers(self, layers: list[int]) -> list[int]:
        return self.known().check_layers(layers)

    def known(self) -> KnownTeacher:
        """What the spec needs of this teacher, without it (extract.known_teacher remembers it for the next run). Built
        once: hop and window are asked per utterance."""
        if self._known is not None:
            return self._known
        c = self.config
        identity = {"digest": self.digest, "class": type(self.model).__name__, "config": forward_config(c.to_dict()),
                    "layer_definition": LAYER_DEFINITION}
        preprocessing = {"sample_rate": self.sample_rate, "mono": MONO, "resampler": RESAMPLER, "normalize": self.do_normalize,
                         "batching": "exact-masked-groupnorm-v1"}
        self._known = KnownTeacher(self.name, identity, int(c.num_hidden_layers), int(c.hidden_size), self.sample_rate,
                                   self.do_normalize, list(c.conv_kernel), list(c.conv_stride), preprocessing, self.compute_dtype)
        return self._known

    def spec(self, layers: list[int], storage_dtype: str, audio: str = "float32") -> dict:
        return self.known().spec(layers, storage_dtype, audio)

    @torch.inference_mode()
    def forward(self, waves: list[np.ndarray], layers: list[int], dtype: str | None = None) -> list[dict[int, np.ndarray]]:
        """Layers `layers` (extract/layers.py) for each wave, each exactly as if it were run alone.

        Thread-safe: the valid lengths and the captured layers belong to this call (ContextVars)."""
        dtype = dtype or self.compute_dtype
        batch, mask, lens = self._padded(waves)
        lengths = lens.tolist()
        with valid_lengths(self.model, lens.to(self.device)), capture_layers(layers) as hidden, \
                torch.autocast(self.device.type, dtype=DTYPES[dtype], enabled=dtype != "float32"):
            self.model(batch.to(self.device), attention_mask=mask.to(self.device))
        frames = [self.num_frames(n) for n in lengths]
        picked = {k: hidden[k].float().cpu().numpy() for k in layers}
        return [{k: picked[k][i, : frames[i]] for k in layers} for i in range(len(waves))]

    def _padded(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(zero-padded batch, attention mask, lengths) on the CPU; each wave normalised first if the teacher asks."""
        lens = torch.tensor([len(w) for w in waves])
        batch = torch.zeros(len(waves), int(lens.max()))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(normalize(w) if self.do_normalize else w)
        return batch, (torch.arange(batch.shape[1])[None, :] < lens[:, None]).long(), lens

    def forward_as_s3prl(self, waves: list[np.ndarray], layers: list[int]) -> torch.Tensor:
        """s3prl's online teacher (extract/s3prl.py), for `--recipe s3prl` A/B runs only."""
        from extract.s3prl import forward_as_s3prl

        return forward_as_s3prl(self, waves, layers)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ExtractError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ExtractError(f"--device {device}: distilcache runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    return dev


def _looks_local(name: str) -> bool:
    """Hub names are 'org/model' or 'model'; anything else (./x, /x, a/b/c, or a/b where a/ exists here) is a path."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return True
    return "/" in name and os.path.isdir(name.split("/")[0])


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub's endpoint: huggingface_hub retries an unreachable hub five times with back-off
    (ten lines and ~30 s before the error), so the answer is asked once, quickly, first."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connect says nothing: let huggingface_hub go through it
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline(name: str) -> bool:
    """True when a hub name must come from the local cache: HF_HUB_OFFLINE, or a hub that does not answer."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    return not hub_reachable()


def _load_config(name: str, revision: str | None):
    from transformers import AutoConfig

    local = os.path.isdir(name)
    if not local and _looks_local(name):
        raise ExtractError(f"--teacher {name}: no such directory; give a local model directory or a hub name like "
                           "facebook/hubert-base-ls960")
    offline = not local and _offline(name)
    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=False, local_files_only=offline)
        if offline:
            print(f"--teacher {name}: the hub is not reachable (or HF_HUB_OFFLINE is set); using the local cache's copy", file=sys.stderr)
        return config, offline
    except Exception as e:  # noqa: BLE001 - hub/network/parse errors all mean "cannot load this teacher"
        if offline:
            raise ExtractError(f"--teacher {name}: not in the local hub cache, and the hub is not reachable (or HF_HUB_OFFLINE is "
                               "set); give a local model directory (save_pretrained), or run once where the hub is reachable") from None
        where = ("local directory (does it hold config.json?)" if local
                 else "hub name (is the hub reachable? for a local directory check the path; HF_HUB_OFFLINE=1 uses the local cache)")
        raise ExtractError(f"--teacher {name}: cannot load its config as a {where}: {str(e).splitlines()[0][:160]}") from None


def load_teacher(name: str, revision: str | None = None, device: str = "auto", compute_dtype: str = "float32",
                 allow_pickle: bool = False) -> Teacher:
    """Any transformers speech encoder with a conv feature extractor (HuBERT, wav2vec2, WavLM, data2vec-audio).

    Weights load as float32 whatever dtype they were saved in (bf16/fp16 compute runs under autocast),
    so an fp16-saved checkpoint serves an fp32 extraction. With allow_pickle, .bin weights are accepted
    too; safetensors are still preferred when present."""
    from transformers import AutoFeatureExtractor, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one on stderr

    if compute_dtype not in DTYPES:
        raise ExtractError(f"--dtype {compute_dtype}: choose one of {', '.join(DTYPES)}")
    if name.endswith(".ckpt") and os.path.isfile(name):  # s3prl's distiller checkpoint (e.g. the published DistilHuBERT)
        from extract.s3prl_distiller import converted_teacher

        name = converted_teacher(name, allow_pickle)
    config, offline = _load_config(name, revision)
    if not hasattr(config, "conv_stride") or not hasattr(config, "num_hidden_layers"):
        raise ExtractError(f"--teacher {name}: a {config.model_type} model is not a speech encoder with a conv feature extractor")
    try:
        model = AutoModel.from_pretrained(name, revision=revision, config=config, dtype=torch.float32, local_files_only=offline,
                                          use_safetensors=None if allow_pickle else True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        hint = " (no safetensors weights: pass --allow-pickle if you trust it)" if "safetensors" in str(e).lower() else ""
        raise ExtractError(f"--teacher {name}: cannot load its weights{hint}: {str(e).splitlines()[0][:160]}") from None
    if not hasattr(model, "feature_extractor") or not hasattr(model.feature_extractor, "conv_layers"):
        raise ExtractError(f"--teacher {name}: {type(model).__name__} has no conv feature extractor; not a speech encoder")
    try:
        fe = AutoFeatureExtractor.from_pretrained(name, revision=revision, local_files_only=offline)
        rate, do_norm = int(fe.sampling_rate), bool(getattr(fe, "do_normalize", False))
    except Exception as e:  # noqa: BLE001 - its sample rate and normalisation shape the targets: never guessed
        where = "the local hub cache's copy" if offline else "it"
        raise ExtractError(f"--teacher {name}: {where} has no usable feature extractor config (preprocessor_config.json: "
                           f"{str(e).splitlines()[0][:100] if str(e) else type(e).__name__}); its sample rate and input "
                           "normalisation shape the targets and are never guessed: save one beside the model "
                           "(Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=...).save_pretrained(DIR))"
                           + (", or run once where the hub is reachable" if offline else "")) from None
    model.eval()
    digest = weights_digest(model)
    install_masked_groupnorm(model)
    install_layer_hooks(model)
    return Teacher(model, name, revision, rate, do_norm, torch.device("cpu"), compute_dtype, digest).to(resolve_device(device))
