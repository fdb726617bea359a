"""s3prl's distiller checkpoints (its `distiller_local` upstream, SUPERB's way in) from and to transformers HuBERT weights.

A DistilHuBERT-style student here is a transformers HubertModel plus prediction heads; s3prl's DistillerModel holds the
same computation under fairseq's names: the conv feature extractor (no conv bias), a projection with no LayerNorm before
it, a post-LN transformer whose positional conv is weight-normed, and heads `Linear(D -> D*N) -> GELU -> SplitLinear`.
This module maps one onto the other, both ways, and says in one line what a design has that s3prl's cannot express.
Written by hand: neither s3prl nor transformers converts between the two (s3prl only loads its own checkpoints).
"""

from __future__ import annotations

import os
import re
import shutil

import torch

from extract.errors import ExtractError

#: transformers HubertModel key (under the encoder) -> s3prl DistillerModel key, for the parts that are not per-layer
_FIXED = {"feature_projection.projection.weight": "post_extract_proj.weight",
          "feature_projection.projection.bias": "post_extract_proj.bias",
          "encoder.pos_conv_embed.conv.bias": "encoder.pos_conv.0.bias",
          "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
          "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
          "encoder.layer_norm.weight": "encoder.layer_norm.weight", "encoder.layer_norm.bias": "encoder.layer_norm.bias"}
#: per transformer layer: transformers' name -> fairseq's
_LAYER = {"attention.q_proj": "self_attn.q_proj", "attention.k_proj": "self_attn.k_proj", "attention.v_proj": "self_attn.v_proj",
          "attention.out_proj": "self_attn.out_proj", "layer_norm": "self_attn_layer_norm",
          "feed_forward.intermediate_dense": "fc1", "feed_forward.output_dense": "fc2", "final_layer_norm": "final_layer_norm"}


def inexpressible(config: dict, match: tuple = ()) -> str | None:
    """What a student (its transformers config, its --match pairs) has that s3prl's DistillerModel cannot express."""
    checks = [(bool(match), "layer-to-layer projections (--match): DistillerModel predicts from its last layer only"),
              (config.get("conv_bias", False), "convolutions with a bias (DistillerModel builds its CNN without one)"),
              (config.get("feat_proj_layer_norm", False), "a LayerNorm before the projection"),
              (config.get("do_stable_layer_norm", False), "pre-LN transformer layers (DistillerModel's students are post-LN)"),
              (config.get("feat_extract_norm", "group") not in ("group", "layer"),
               f"feature-extractor norm {config.get('feat_extract_norm')}"),
              (config.get("hidden_act", "gelu") != "gelu", f"activation {config.get('hidden_act')} (DistillerModel: gelu)"),
              (config.get("conv_pos_batch_norm", False), "a batch-normed positional conv"),
              (config["conv_dim"][-1] == config["hidden_size"], "a CNN as wide as the transformer (DistillerModel then has no "
                                                                 "projection)")]
    return next((why for bad, why in checks if bad), None)


def distiller_config(config: dict, target_layers: list[int], target_dim: int, feature_grad_mult: float = 0.1) -> dict:
    """s3prl's `Config["distiller"]` for a student: its sizes, dropouts, and the heads predicting `target_layers`."""
    convs = ", ".join(f"({d}, {k}, {s})" for d, k, s in zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"], strict=True))
    return {"extractor_mode": "default" if config.get("feat_extract_norm", "group") == "group" else "layer_norm",
            "extractor_conv_feature_layers": f"[{convs}]", "extractor_dropout": 0.0, "feature_grad_mult": feature_grad_mult,
            "conv_pos": config["num_conv_pos_embeddings"], "conv_pos_groups": config["num_conv_pos_embedding_groups"],
            "encoder_layers": config["num_hidden_layers"], "encoder_embed_dim": config["hidden_size"],
            "encoder_ffn_embed_dim": config["intermediate_size"], "encoder_attention_heads": config["num_attention_heads"],
            "activation_fn": "gelu", "layer_norm_first": False, "attention_type": "original",
            "dropout": config.get("hidden_dropout", 0.1), "attention_dropout": config.get("attention_dropout", 0.1),
            "activation_dropout": config.get("activation_dropout", 0.1), "encoder_layerdrop": 0.0,
            "final_dim": target_dim, "out_layer_type": "expand-last", "out_layer_inter_dim": -1,
            "n_tasks": len(target_layers), "task_emb_type": "expand-last", "pred_layer_id": list(target_layers),
            "loss_type": "l1", "cosine_loss": 1.0, "init_teacher_conv_layers": False, "init_teacher_encoder_layers": False}


def to_distiller(encoder: dict[str, torch.Tensor], heads: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A student's encoder and heads state dicts as DistillerModel's."""
    out = {}
    group = config.get("feat_extract_norm", "group") == "group"
    for i in range(len(config["conv_dim"])):
        out[f"feature_extractor.conv_layers.{i}.0.weight"] = encoder[f"feature_extractor.conv_layers.{i}.conv.weight"]
        norm = f"feature_extractor.conv_layers.{i}.layer_norm"
        if f"{norm}.weight" in encoder:  # group norm: the first layer only (fairseq's Sequential index 2); layer norm: each
            where = f"feature_extractor.conv_layers.{i}.2" + ("" if group else ".1")
            out[f"{where}.weight"], out[f"{where}.bias"] = encoder[f"{norm}.weight"], encoder[f"{norm}.bias"]
    for ours, theirs in _FIXED.items():
        out[theirs] = encoder[ours]
    for i in range(config["num_hidden_layers"]):
        for ours, theirs in _LAYER.items():
            for p in ("weight", "bias"):
                out[f"encoder.layers.{i}.{theirs}.{p}"] = encoder[f"encoder.layers.{i}.{ours}.{p}"]
    n = sum(1 for k in heads if k.startswith("heads.") and k.endswith(".weight"))
    out["output_layer.0.weight"], out["output_layer.0.bias"] = heads["proj.weight"], heads["proj.bias"]
    if n == 1:
        out["output_layer.2.layer.weight"], out["output_layer.2.layer.bias"] = heads["heads.0.weight"], heads["heads.0.bias"]
    else:  # SplitLinear: weight [N, D_in, D_out] (x @ W), bias [1, 1, N, D_out]
        out["output_layer.2.weight"] = torch.stack([heads[f"heads.{k}.weight"].t() for k in range(n)])
        out["output_layer.2.bias"] = torch.stack([heads[f"heads.{k}.bias"] for k in range(n)])[None, None]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def from_distiller(states: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(a transformers HubertConfig dict, the HubertModel state dict) of an s3prl distiller checkpoint's student."""
    try:
        cfg, sd = states["Config"]["distiller"], states["Distiller"]
        convs = eval_conv_layers(str(cfg.get("extractor_conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")))
        layers = int(cfg.get("encoder_layers", 1))
        layer_norm_cnn = cfg.get("extractor_mode", "default") == "layer_norm"
        config = {"model_type": "hubert", "architectures": ["HubertModel"], "conv_dim": [c[0] for c in convs],
                  "conv_kernel": [c[1] for c in convs], "conv_stride": [c[2] for c in convs], "conv_bias": False,
                  "feat_extract_norm": "layer" if layer_norm_cnn else "group", "feat_proj_layer_norm": False,
                  "num_conv_pos_embeddings": int(cfg.get("conv_pos", 128)),
                  "num_conv_pos_embedding_groups": int(cfg.get("conv_pos_groups", 16)),
                  "num_hidden_layers": layers, "hidden_size": int(cfg.get("encoder_embed_dim", 768)),
                  "intermediate_size": int(cfg.get("encoder_ffn_embed_dim", 3072)),
                  "num_attention_heads": int(cfg.get("encoder_attention_heads", 12)), "hidden_act": "gelu",
                  "do_stable_layer_norm": bool(cfg.get("layer_norm_first", False)), "mask_time_prob": 0.0,
                  "hidden_dropout": float(cfg.get("dropout", 0.1)), "attention_dropout": float(cfg.get("attention_dropout", 0.1)),
                  "activation_dropout": float(cfg.get("activation_dropout", 0.1)), "feat_proj_dropout": 0.0, "layerdrop": 0.0}
        if config["do_stable_layer_norm"] or str(cfg.get("activation_fn", "gelu")) != "gelu" or "post_extract_proj.weight" not in sd:
            raise ExtractError("a pre-LN, non-gelu or projection-less distiller")
        encoder = {}
        for i in range(len(convs)):
            encoder[f"feature_extractor.conv_layers.{i}.conv.weight"] = sd[f"feature_extractor.conv_layers.{i}.0.weight"]
            where = f"feature_extractor.conv_layers.{i}.2" + (".1" if layer_norm_cnn else "")
            if f"{where}.weight" in sd:
                norm = f"feature_extractor.conv_layers.{i}.layer_norm"
                encoder[f"{norm}.weight"], encoder[f"{norm}.bias"] = sd[f"{where}.weight"], sd[f"{where}.bias"]
        for ours, theirs in _FIXED.items():
            encoder[ours] = sd[theirs]
        for i in range(layers):
            for ours, theirs in _LAYER.items():
                for p in ("weight", "bias"):
                    encoder[f"encoder.layers.{i}.{ours}.{p}"] = sd[f"encoder.layers.{i}.{theirs}.{p}"]
    except (KeyError, TypeError, ValueError, SyntaxError, AttributeError, ExtractError) as e:
        raise ExtractError(f"not an s3prl distiller checkpoint this converter knows ({type(e).__name__}: {str(e)[:80]}); it "
                           "takes the checkpoints s3prl's distiller pretraining saves (Config['distiller'], Distiller)") from None
    return config, encoder


def eval_conv_layers(text: str) -> list[tuple[int, int, int]]:
    """fairseq's conv-layer spec ("[(512,10,5)] + [(512,3,2)] * 4 + ...") read without eval(): read back from a file, so
    untrusted. Only lists of int triples, `+` and `* N` are accepted."""
    import ast

    def value(node):
        if isinstance(node, ast.List):
            return [tuple(int(ast.literal_eval(e)) for e in t.elts) for t in node.elts if isinstance(t, ast.Tuple)]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and isinstance(node.right, ast.Constant):
            return value(node.left) * int(node.right.value)
        raise ValueError(f"conv layers {text[:60]!r}")

    layers = value(ast.parse(text, mode="eval").body)
    if not layers or any(len(c) != 3 for c in layers):
        raise ValueError(f"conv layers {text[:60]!r}")
    return layers


def remove_stale_conversions(directory: str) -> None:
    """Half-written conversions of a killed run (`s3prl-<16 hex>.tmp-<pid>` of a process not alive here): only our own
    names, never anything else in the directory."""
    from store.fs import pid_alive

    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        m = re.fullmatch(r"s3prl-[0-9a-f]{16}\.tmp-(\d{1,10})", name)
        path = os.path.join(directory, name)
        if m and not pid_alive(int(m.group(1))) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def converted_teacher(ckpt: str, allow_pickle: bool = False) -> str:
    """The transformers directory of an s3prl distiller checkpoint, converted once (under the cache root, by the file's
    sha256) and reused: what --teacher takes when given a `.ckpt`."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    from store import default_cache_dir
    from store.source_files import file_sha256

    digest = file_sha256(ckpt)[1]
    out = os.path.join(default_cache_dir(), "converted", f"s3prl-{digest[:16]}")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    try:
        states = torch.load(ckpt, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch.load's errors for a pickled object are of many kinds
        if allow_pickle:
            raise ExtractError(f"--teacher {ckpt}: not a torch checkpoint ({type(e).__name__})") from None
        raise ExtractError(f"--teacher {ckpt}: holds pickled objects (s3prl saves its optimizer and arguments that way); pass "
                           "--allow-pickle if you trust the file") from None
    config, encoder = from_distiller(states)
    model = HubertModel(HubertConfig(**config))
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    if [k for k in missing if k != "masked_spec_embed"] or unexpected:
        raise ExtractError(f"--teacher {ckpt}: its weights do not fill a HubertModel (missing {missing[:2]}, unexpected "
                           f"{unexpected[:2]})")
    remove_stale_conversions(os.path.dirname(out))
    tmp = f"{out}.tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    model.save_pretrained(tmp)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False, return_attention_mask=True).save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another run converted it first: ours (a directory this call made) goes
        shutil.rmtree(tmp, ignore_errors=True)
    return out
