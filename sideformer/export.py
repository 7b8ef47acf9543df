"""ONNX export of a trained model for mobile and edge runtimes (`sideformer export`).

The graph takes what an app has: RGB pixels in 0..255 as float32 N x 3 x H x W, any batch size and image
size. It normalises them itself (the same `model.normalize` as training) and returns the logits at 1/4
resolution, N x classes x H/4 x W/4: upsample them to the image and take the argmax on the device. The
class names, palette and training input size travel in the file's metadata, readable with
`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`.

FILE is replaced only after the export is checked: onnxruntime runs it on synthetic street scenes at the
training size (batch 1) and at another size (batch 2), and the largest absolute difference from the
PyTorch logits must be within `atol`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sideformer.atomic import atomic_path
from sideformer.data.synth import draw_scene
from sideformer.errors import UserError
from sideformer.model import normalize
from sideformer.output_lock import output_lock
from sideformer.trained_model import TrainedModel, load_trained_model

Exporter = Literal["torchscript", "dynamo"]
INPUT, OUTPUT = "image", "logits"
DEFAULT_OPSET = 17


class PixelsToLogits(torch.nn.Module):
    """SegFormer with normalisation inside: RGB 0..255 float N x 3 x H x W -> logits at 1/4 size."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=normalize(image)).logits


@dataclass
class ExportCheck:
    shape: tuple[int, ...]
    max_abs_diff: float
    argmax_agreement: float
    """Share of logit positions where ONNX and PyTorch pick the same class."""


@dataclass
class ExportResult:
    path: Path
    exporter: Exporter
    opset: int
    atol: float
    seconds: float
    checks: list[ExportCheck] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)


def check_sizes(base_size: int) -> list[tuple[int, int, int]]:
    """(batch, height, width) inputs the export is checked on: the training size, landscape 3:4, and a
    smaller size with batch 2, which shows that the batch and spatial axes really are dynamic."""
    return [(1, base_size, base_size * 4 // 3), (2, max(32, base_size * 3 // 4), base_size)]


def export_onnx(
    model: str | Path | TrainedModel,
    onnx_path: str | Path,
    size: int | None = None,
    atol: float = 1e-3,
    exporter: Exporter = "torchscript",
    opset: int | None = None,
) -> ExportResult:
    """Export `model` (a run or model folder) to `onnx_path`, check it with onnxruntime, then move it
    into place. Raises UserError when onnx/onnxruntime are missing or the check fails."""
    onnx_path = Path(onnx_path)
    if onnx_path.is_dir():
        raise UserError(
            f"--onnx {onnx_path} is a folder; give the file to write, e.g. --onnx {onnx_path / 'model.onnx'}"
        )
    _require_onnx(exporter)
    import onnx

    trained = (
        model
        if isinstance(model, TrainedModel)
        else load_trained_model(model, device="cpu", precision="fp32")
    )
    # eval() on the wrapper too: the exporter restores the wrapper's mode, and with it its children's.
    wrapped = PixelsToLogits(trained.model.float().cpu()).eval()
    base = size or trained.base_size
    if base < 32:
        raise UserError(f"--size {base}: must be >= 32 pixels.")
    opset = opset or (18 if exporter == "dynamo" else DEFAULT_OPSET)
    inputs = [
        _scene_batch(batch, height, width, seed)
        for seed, (batch, height, width) in enumerate(check_sizes(base))
    ]

    started = time.perf_counter()
    with output_lock(onnx_path, flag="--onnx"), atomic_path(onnx_path) as tmp:
        _run_exporter(wrapped, inputs[-1], tmp, exporter, opset)
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph)
        del graph.metadata_props[:]
        for key, value in _metadata(trained).items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
        result = ExportResult(onnx_path, exporter, opset, atol, 0.0, _compare(wrapped, tmp, inputs))
        result.seconds = time.perf_counter() - started
        if result.max_abs_diff > atol:
            other = "dynamo" if exporter == "torchscript" else "torchscript"
            raise UserError(
                f"ONNX export differs from PyTorch by {result.max_abs_diff:.3g} (> --atol {atol:g}); "
                f"{onnx_path} was not written. Try --exporter {other}."
            )
    return result


def _require_onnx(exporter: Exporter) -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"ONNX export needs onnx and onnxruntime ({exc}); install them: pip install 'sideformer[export]'"
        ) from None
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError("--exporter dynamo needs onnxscript: pip install 'sideformer[export]'.") from None


def _metadata(trained: TrainedModel) -> dict[str, str]:
    """What an app needs besides the graph, in the file's metadata_props."""
    return {
        "classes": json.dumps(trained.classes),
        "palette": json.dumps([list(c) for c in trained.palette]),
        "ignore_index": str(trained.ignore_index),
        "base_size": str(trained.base_size),
        "input": f"{INPUT}: float32 N x 3 x H x W, RGB 0..255 (normalised inside the graph)",
        "output": f"{OUTPUT}: float32 N x {len(trained.classes)} x H/4 x W/4 (rounded up); upsample, argmax",
        "source": str(trained.folder),
    }


def _compare(wrapped: torch.nn.Module, path: Path, inputs: list[torch.Tensor]) -> list[ExportCheck]:
    """Run the ONNX file with onnxruntime on each input and compare with the PyTorch logits."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks = []
    with torch.no_grad():
        for batch in inputs:
            expected = wrapped(batch).numpy()
            got = session.run([OUTPUT], {INPUT: batch.numpy()})[0]
            if got.shape != expected.shape:
                raise UserError(f"ONNX export gives logits of shape {got.shape}, PyTorch {expected.shape}.")
            checks.append(
                ExportCheck(
                    tuple(batch.shape),
                    float(np.abs(got - expected).max()),
                    float((got.argmax(1) == expected.argmax(1)).mean()),
                )
            )
    return checks


def _scene_batch(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Synthetic street scenes (real-looking input rather than noise) as float RGB N x 3 x H x W."""
    images = [draw_scene(np.random.default_rng([seed, i]), height, width)[0] for i in range(batch)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().contiguous()


def _run_exporter(
    wrapped: torch.nn.Module, example: torch.Tensor, path: Path, exporter: Exporter, opset: int
) -> None:
    if exporter == "dynamo":
        # Chatter per graph rewrite, and warnings about torchvision operators SegFormer does not use.
        for noisy in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
        dynamic: dict[str, Any] = {"dynamic_shapes": (dims,), "dynamo": True, "verbose": False}
    else:
        axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 2: "h4", 3: "w4"}}
        dynamic = {"dynamic_axes": axes, "dynamo": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        # The TorchScript exporter is deprecated in favour of dynamo, but is ~20x faster here and exact;
        # its tracer warnings concern a branch (causal attention) SegFormer never takes.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=opset,
            **dynamic,
        )


def format_export(result: ExportResult) -> str:
    size_mb = os.path.getsize(result.path) / 1e6
    lines = [
        f"wrote {result.path} ({size_mb:.1f} MB, {result.exporter} exporter, opset {result.opset}, "
        f"{result.seconds:.1f}s)",
        "checked with onnxruntime against PyTorch:",
    ]
    for c in result.checks:
        shape = "x".join(str(d) for d in c.shape)
        lines.append(
            f"  input {shape}: max abs logit difference {c.max_abs_diff:.2e}, same class at "
            f"{c.argmax_agreement:.2%} of positions"
        )
    lines.append(f"max abs difference {result.max_abs_diff:.2e} (tolerance {result.atol:g})")
    return "\n".join(lines)
