"""`export-student RUN_DIR --onnx OUT.onnx [--quantize int8]`: the trained student for onnxruntime, on device.

The exported graph takes `waveform` [batch, samples] float32 at the teacher's rate, raw as the student was trained on
it (student/preprocessor_config.json says do_normalize), any length (dynamic), and gives `last_hidden_state`
[batch, frames, width] and `hidden_states` [layers + 1, batch, frames, width] (the weighted sum a SUPERB probe takes).
The student's GroupNorm sees the whole input, so batch utterances of one length (or one at a time): padding would
enter its statistics, as in transformers itself without an attention mask.

torch's dynamo exporter is used: the TorchScript one (dynamo=False) exports transformers 5's attention wrongly
(relative error ~1 on the same input; measured, docs/benchmarks.md). Every export is checked against PyTorch on two
lengths before it is kept: a wrong export is an error, never a file. `--quantize int8` adds onnxruntime's dynamic
int8 quantization (weights int8, activations quantized per call) beside it, its error and speed measured and printed.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings

import click
import numpy as np
import torch

from store.oneline import OneLineCommand, UserError, cli_errors

CHECK_LENGTHS = (16000, 23_457)  # two lengths, one not a multiple of the hop: dynamic shapes, checked
TOLERANCE = 1e-4  # max |onnx - torch| / max |torch|, fp32


class ExportError(UserError):
    """A run dir that cannot be exported, or an export that does not match PyTorch; one line."""


class _Outputs(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(waveform, output_hidden_states=True)
        return out.last_hidden_state, torch.stack(out.hidden_states)


MARK = "distilcache.export"  # metadata_props key of every graph written here: an existing file without it is not ours
OPSETS = (18, 23)  # torch's dynamo exporter starts at 18; onnxruntime 1.18+ runs up to 23 (checked on the session anyway)


def _load(run_dir: str) -> torch.nn.Module:
    from transformers import HubertModel

    student = os.path.join(run_dir, "student")
    if not os.path.isfile(os.path.join(student, "config.json")) and not os.path.isfile(os.path.join(student, "model.safetensors")):
        raise ExportError(f"{run_dir}: no loadable student/ (no student/config.json or model.safetensors); give the run dir of a "
                          "finished train-student run")
    try:
        return HubertModel.from_pretrained(student).eval()
    except Exception as e:  # noqa: BLE001 - read back from disk: a truncated safetensors, a config.json that is a list...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise ExportError(f"{run_dir}: no loadable student/ ({type(e).__name__}: {first}); give the run dir of a finished "
                          "train-student run, or re-export it (train-student --resume re-exports from ckpt.pt)") from None


def _ours(path: str) -> bool:
    """Whether `path` is an ONNX graph this command wrote (its mark in the model's metadata)."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any file at all may be there
        return False
    return any(p.key == MARK for p in model.metadata_props)


def check_target(run_dir: str, out: str) -> None:
    """Refuse an --onnx target that would overwrite what is not ours: a directory, anything inside the run's student/,
    an existing file that is not a graph written here (the student's own weights, say)."""
    from train.export.student import check_export_target

    check_export_target(run_dir, out, "--onnx", "an ONNX graph", "student.onnx", _ours, ExportError)


def _mark(path: str) -> None:
    """Put our mark in the graph's metadata (the file is rewritten in place: it is our temp file)."""
    import onnx

    model = onnx.load(path)
    model.metadata_props.add(key=MARK, value="1")
    onnx.save(model, path)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def _seconds_per_audio_second(run, seconds: float = 10.0, repeat: int = 3) -> float:
    x = np.random.default_rng(0).standard_normal((1, int(seconds * 16000))).astype(np.float32) * 0.1
    run(x)
    best = min(_timed(run, x) for _ in range(repeat))
    return best / seconds


def _timed(run, x) -> float:
    t = time.perf_counter()
    run(x)
    return time.perf_counter() - t


def export_onnx(run_dir: str, out: str, quantize: str | None = None, opset: int = 18, verbose: bool = False) -> dict:
    """Write OUT (fp32) and, with quantize="int8", OUT's .int8.onnx beside it; returns what was measured."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("export-student --onnx needs onnx, onnxscript and onnxruntime: pip install 'distilcache[onnx]'") from None
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize}: choose int8")
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise ExportError(f"--opset {opset}: give {OPSETS[0]} to {OPSETS[1]} (torch's exporter starts at {OPSETS[0]}; "
                          f"onnxruntime runs up to {OPSETS[1]})")
    check_target(run_dir, out)
    if quantize == "int8":
        check_target(run_dir, _int8_name(out))
    model = _Outputs(_load(run_dir))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}.onnx"
    samples = torch.export.Dim("samples", min=800, max=16000 * 3600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # the exporter's registry chatter (torchvision ops) is not the user's business
        try:
            torch.onnx.export(model, (torch.zeros(1, CHECK_LENGTHS[0]),), tmp, input_names=["waveform"],
                              output_names=["last_hidden_state", "hidden_states"], opset_version=opset, dynamo=True,
                              dynamic_shapes={"waveform": {0: torch.export.Dim("batch", max=4096), 1: samples}}, external_data=False,
                              verbose=None if verbose else False)  # its "[torch.onnx] ..." step lines only with --verbose
        finally:
            logging.disable(logging.NOTSET)
    report = {"onnx": out, "opset": opset, "checked_lengths": list(CHECK_LENGTHS)}
    try:
        _mark(tmp)
        try:
            session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are one class per cause, all of them a refusal here
            raise ExportError(f"--opset {opset}: onnxruntime {ort.__version__} cannot run the exported graph "
                              f"({str(e).splitlines()[0][:120]}); try the default --opset 18") from None
        errors = []
        for n in CHECK_LENGTHS:
            x = torch.from_numpy(np.random.default_rng(n).standard_normal((2, n)).astype(np.float32) * 0.1)
            with torch.no_grad():
                want = [t.numpy() for t in model(x)]
            got = session.run(None, {"waveform": x.numpy()})
            errors.append(max(_rel(g, w) for g, w in zip(got, want, strict=True)))
        report["max_rel_error"] = max(errors)
        if report["max_rel_error"] > TOLERANCE:
            raise ExportError(f"{out}: the ONNX graph differs from PyTorch by {report['max_rel_error']:.3g} (relative) > "
                              f"{TOLERANCE:g}; not written (report it with your torch/onnxruntime versions)")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with torch.no_grad():
        report["torch_s_per_audio_s"] = _seconds_per_audio_second(lambda x: model(torch.from_numpy(x)))
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    report["onnx_s_per_audio_s"] = _seconds_per_audio_second(lambda x: session.run(None, {"waveform": x}))
    if quantize == "int8":
        report.update(_int8(out, model, ort, verbose))
    return report


def _int8_name(out: str) -> str:
    return out[: -len(".onnx")] + ".int8.onnx" if out.endswith(".onnx") else out + ".int8.onnx"


def _int8(out: str, model: torch.nn.Module, ort, verbose: bool = False) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = _int8_name(out)
    # MatMul (the transformer) only: onnxruntime's ConvInteger made the CNN 2.6x slower than fp32 here (docs/benchmarks.md)
    if not verbose:  # its advice to pre-process the graph (a root-logger warning) is for its own users, not ours
        logging.disable(logging.WARNING)
    try:
        quantize_dynamic(out, q, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        logging.disable(logging.NOTSET)
    if not _ours(q):
        _mark(q)
    session = ort.InferenceSession(q, providers=["CPUExecutionProvider"])
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 48_000)).astype(np.float32) * 0.1)
    with torch.no_grad():
        want = model(x)[0].numpy()
    got = session.run(None, {"waveform": x.numpy()})[0]
    cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-12))
    return {"int8": q, "int8_rel_error": _rel(got, want), "int8_cosine": cos,
            "int8_s_per_audio_s": _seconds_per_audio_second(lambda a: session.run(None, {"waveform": a})),
            "int8_bytes": os.path.getsize(q), "fp32_bytes": os.path.getsize(out)}


@click.command("export-student", cls=OneLineCommand, context_settings={"show_default": True})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--onnx", "onnx_out", default=None, help="where to write the ONNX graph (fp32)")
@click.option("--s3prl", "s3prl_out", default=None, help="where to write the checkpoint s3prl's distiller_local upstream loads "
              "(SUPERB: run_downstream.py -u distiller_local -k FILE)")
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="also write an int8 (dynamic quantization) copy")
@click.option("--opset", type=click.IntRange(*OPSETS), default=OPSETS[0], help="ONNX opset of the graph")
@click.option("--verbose", is_flag=True, help="also torch.onnx's and onnxruntime's own messages, and the measured report as JSON "
              "on stderr")
@cli_errors(kept="nothing was changed")
def main(run_dir: str, onnx_out: str | None, s3prl_out: str | None, quantize: str | None, opset: int, verbose: bool) -> None:
    """Export RUN_DIR's student to ONNX (dynamic length, checked against PyTorch; optionally int8) and/or to s3prl."""
    if not (onnx_out or s3prl_out):
        raise click.UsageError("give --onnx OUT.onnx, --s3prl OUT.ckpt, or both")
    if s3prl_out:
        from train.export.s3prl_ckpt import export_s3prl

        written = export_s3prl(run_dir, s3prl_out)
        click.echo(f"{written['s3prl']}: s3prl distiller checkpoint, {written['layers']} layers, predicting teacher layers "
                   f"{','.join(map(str, written['pred_layer_id']))} (run_downstream.py -u distiller_local -k {written['s3prl']})")
        if not onnx_out:
            return
    r = export_onnx(run_dir, onnx_out, quantize, opset, verbose)
    if verbose:
        click.echo(json.dumps(r), err=True)
    click.echo(f"{r['onnx']}: matches PyTorch to {r['max_rel_error']:.2g} (relative); {r['onnx_s_per_audio_s'] * 1000:.2f} ms per "
               f"audio second (PyTorch {r['torch_s_per_audio_s'] * 1000:.2f} ms)")
    if quantize:
        click.echo(f"{r['int8']}: int8, {r['int8_bytes'] / 1e6:.1f} MB (fp32 {r['fp32_bytes'] / 1e6:.1f} MB), relative error "
                   f"{r['int8_rel_error']:.3g}, cosine {r['int8_cosine']:.4f}, {r['int8_s_per_audio_s'] * 1000:.2f} ms per audio second")


if __name__ == "__main__":
    main()
