"""Inference images/s at 512x512: `sideformer predict`'s code (PyTorch) and its ONNX export vs the HF docs.

One SegFormer (random init, 22 classes, saved with save_pretrained) segments the same synthetic street
scenes, in memory (file reading and writing left out on every side), batch 4, from RGB uint8 512x512 to a
class-id mask at 512x512:
  [ref]   the HF docs' way: SegformerImageProcessor (resize, rescale, normalise), the model as shipped,
          post_process_semantic_segmentation(target_sizes=...) (upsample + argmax)
  [torch] sideformer.predict.segment: resize in OpenCV, normalise on the device, the folded decode head,
          upsample + argmax per image (bf16 autocast on a GPU)
  [onnx]  `sideformer export` (TorchScript exporter, opset 17) run by onnxruntime's CPU provider with the
          same intra-op thread count, then the same upsample + argmax
Each side runs in its own process (spawned), so each peak RSS is its own; on a GPU the PyTorch sides also
report peak GPU memory. Rates are the median of --rounds timed passes over the images after a warm-up.

    .venv/bin/python benchmarks/inference.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import describe, peak_rss_mib, write_json  # benchmarks/machine.py

from sideformer.data.classes import CLASS_NAMES, PALETTE
from sideformer.data.synth import draw_scene


def scenes(count: int, size: int) -> list[np.ndarray]:
    return [draw_scene(np.random.default_rng([7, i]), size, size)[0] for i in range(count)]


def timed(fn: Any, images: list[np.ndarray], batch: int, rounds: int) -> float:
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]
    for chunk in batches[:1]:
        fn(chunk)  # warm-up
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for chunk in batches:
            fn(chunk)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(len(images) / (time.perf_counter() - started))
    return statistics.median(rates)


def measure(side: str, folder: str, args: dict[str, Any]) -> dict[str, float]:
    """Runs in a fresh process: images/s and peak memory of one side."""
    torch.set_num_threads(args["threads"])
    images = scenes(args["images"], args["size"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args["size"]
    if side == "ref":
        from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

        # The docs' SegformerImageProcessor is this class when torchvision is not installed (as here).
        processor = SegformerImageProcessorPil(size={"height": size, "width": size})
        model = SegformerForSemanticSegmentation.from_pretrained(folder).to(device).eval()

        @torch.no_grad()
        def run(batch: list[np.ndarray]) -> list[torch.Tensor]:
            inputs = processor(images=batch, return_tensors="pt").to(device)
            outputs = model(**inputs)
            sizes = [image.shape[:2] for image in batch]
            return processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)

    elif side == "torch":
        from sideformer.predict import segment
        from sideformer.trained_model import load_trained_model

        trained = load_trained_model(folder)

        def run(batch: list[np.ndarray]) -> list[np.ndarray]:
            return segment(trained, batch)

    else:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args["threads"]
        session = onnxruntime.InferenceSession(args["onnx"], options, providers=["CPUExecutionProvider"])

        def run(batch: list[np.ndarray]) -> np.ndarray:
            pixels = np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32)
            logits = torch.from_numpy(session.run(["logits"], {"image": pixels})[0])
            full = torch.nn.functional.interpolate(
                logits, size=(size, size), mode="bilinear", align_corners=False
            )
            return full.argmax(1).to(torch.uint8).numpy()

    rate = timed(run, images, args["batch"], args["rounds"])
    result = {"images_per_second": rate, "peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda" and side != "onnx":
        result["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def ref_rate(results: dict[str, dict[str, float]]) -> float:
    return results["ref"]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 images at 128x128, 1 round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.size, args.images, args.rounds = 128, 4, 1
    print(f"machine: {describe()}")
    print(
        f"settings: b0 random init, 22 classes, {args.images} images {args.size}x{args.size}, "
        f"batch {args.batch}, {args.threads} threads, median of {args.rounds} passes"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="sideformer-inference-") as tmp:
        from sideformer.config import ModelConfig
        from sideformer.export import export_onnx
        from sideformer.model import build_model

        folder = Path(tmp) / "model"
        torch.manual_seed(0)
        model = build_model(ModelConfig(variant="b0", fold_decode_head=False), dict(enumerate(CLASS_NAMES)))
        model.save_pretrained(folder)
        extra = {"classes": CLASS_NAMES, "palette": PALETTE, "ignore_index": 255, "base_size": args.size}
        (folder / "sideformer.json").write_text(json.dumps(extra))
        onnx_path = Path(tmp) / "model.onnx"
        report = export_onnx(folder, onnx_path)
        print(f"exported {onnx_path.name}: max abs logit difference from PyTorch {report.max_abs_diff:.1e}")
        shared = vars(args) | {"onnx": str(onnx_path)}
        shared.pop("json")
        context = multiprocessing.get_context("spawn")
        for side in ("ref", "torch", "onnx"):
            with context.Pool(1) as pool:
                results[side] = pool.apply(measure, (side, str(folder), shared))
            rate, ratio = (
                results[side]["images_per_second"],
                results[side]["images_per_second"] / ref_rate(results),
            )
            gpu = (
                f", GPU peak {results[side]['gpu_peak_mib']:.0f} MiB"
                if "gpu_peak_mib" in results[side]
                else ""
            )
            print(
                f"  [{side:<5}] {rate:6.2f} img/s ({ratio:.2f}x), "
                f"peak RSS {results[side]['peak_rss_mib']:.0f} MiB{gpu}"
            )
    rates = {side: r["images_per_second"] for side, r in results.items()}
    print(
        f"summary: inference {args.size}x{args.size} batch {args.batch}: sideformer predict (PyTorch) "
        f"{rates['torch']:.2f} img/s ({rates['torch'] / rates['ref']:.2f}x), ONNX {rates['onnx']:.2f} img/s "
        f"({rates['onnx'] / rates['ref']:.2f}x) vs the HF docs' {rates['ref']:.2f} img/s"
    )
    if args.json:
        write_json(args.json, args, results=results)


if __name__ == "__main__":
    main()
