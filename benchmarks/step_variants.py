"""Where a training step's time goes on a GPU, and what shortens it: one SideFormer step on pre-loaded
tensors under several settings (precision, channels_last, cuDNN autotuning, torch.compile with and
without CUDA graphs), the HF docs' step beside them, then a profile of one step: GPU busy time against wall
time (a step whose GPU is idle most of the time is bound by the CPU launching its kernels) and the kernels
that take the most GPU time.

    .venv/bin/python benchmarks/step_variants.py [--size 512] [--batch-size 8] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py
from train_throughput import reference_model  # benchmarks/train_throughput.py

from sideformer.config import ModelConfig, load_config
from sideformer.data.metadata import load_metadata
from sideformer.data.synth import write_synthetic_dataset
from sideformer.model import autocast_dtype, build_model, normalize, training_loss
from sideformer.train import build_optimizer

Step = Callable[[], None]


def sideformer_step(
    meta, images, labels, device, precision: str, channels_last: bool, compile_mode: str | None
) -> Step:
    config = load_config(base={"train": {"precision": precision}, "optim": {"warmup_steps": 0}})
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="b0"), meta.id2label, meta.ignore_index).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config, fused=True)
    dtype = autocast_dtype(precision, device)
    forward = model if compile_mode is None else torch.compile(model, mode=compile_mode)

    def step() -> None:
        if compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        loss, _ = training_loss(forward, images, labels, meta.ignore_index, dtype, channels_last)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def reference_step(meta, images, labels, device) -> Step:
    model = reference_model("b0", meta, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)

    def step() -> None:
        model(pixel_values=normalize(images), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def median_seconds(step: Step, warmup: int, steps: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def profile(step: Step, device: torch.device, steps: int = 5) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = (time.perf_counter() - started) / steps
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu = sum(e.self_device_time_total for e in kernels) / 1e6 / steps
    launches = sum(e.count for e in kernels) / steps
    print(
        f"  wall {wall * 1000:.1f} ms/step, GPU busy {gpu * 1000:.1f} ms/step ({100 * gpu / wall:.0f}%), "
        f"{launches:.0f} kernels/step"
    )
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=15, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: 128 px, 2 steps, no compile")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps = 128, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"machine: {describe()}")
    print(f"settings: b0, {args.size}x{args.size}, batch {args.batch_size}, median of {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        meta = load_metadata(write_synthetic_dataset(Path(tmp), train=1, valid=1, size=(64, 64)))

    def tensors(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(
            0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8, generator=generator
        )
        labels = torch.randint(0, meta.num_classes, (batch, args.size, args.size), generator=generator)
        return images.to(device), labels.to(device)

    small, large = tensors(args.batch_size), tensors(4 * args.batch_size)

    def ours(
        data, precision: str, channels_last: bool = False, mode: str | None = None
    ) -> Callable[[], Step]:
        return lambda: sideformer_step(meta, *data, device, precision, channels_last, mode)

    # (name, batch, cudnn.benchmark, make): the batch of 4x shows where the GPU, not the CPU, sets the pace.
    variants: list[tuple[str, int, bool, Callable[[], Step]]] = [
        ("reference fp32", args.batch_size, False, lambda: reference_step(meta, *small, device)),
        ("fp32", args.batch_size, False, ours(small, "fp32")),
        ("bf16", args.batch_size, False, ours(small, "bf16")),
        ("bf16 channels_last", args.batch_size, False, ours(small, "bf16", True)),
        ("reference fp32", args.batch_size, True, lambda: reference_step(meta, *small, device)),
        ("bf16", args.batch_size, True, ours(small, "bf16")),
        ("bf16 channels_last", args.batch_size, True, ours(small, "bf16", True)),
        ("reference fp32", 4 * args.batch_size, False, lambda: reference_step(meta, *large, device)),
        ("bf16", 4 * args.batch_size, False, ours(large, "bf16")),
        ("bf16 channels_last", 4 * args.batch_size, False, ours(large, "bf16", True)),
    ]
    if not args.quick:
        variants += [
            # torch.compile's default mode measured about the eager step's time (gpu.sh); CUDA graphs:
            (
                "bf16 compile reduce-overhead",
                args.batch_size,
                False,
                ours(small, "bf16", mode="reduce-overhead"),
            ),
            (
                "fp32 compile reduce-overhead",
                args.batch_size,
                False,
                ours(small, "fp32", mode="reduce-overhead"),
            ),
        ]
    results: dict[str, float] = {}
    for name, batch, benchmark_cudnn, make in variants:
        torch.backends.cudnn.benchmark = benchmark_cudnn
        key = f"{name}, batch {batch}{', cudnn.benchmark' if benchmark_cudnn else ''}"
        started = time.perf_counter()
        seconds = median_seconds(make(), 3, args.steps, sync)
        results[key] = seconds
        reference = results[f"reference fp32, batch {batch}{', cudnn.benchmark' if benchmark_cudnn else ''}"]
        print(
            f"  {key:<52} {seconds * 1000:7.1f} ms/step {batch / seconds:7.1f} img/s "
            f"{reference / seconds:5.2f}x ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    torch.backends.cudnn.benchmark = False
    print("\nprofile: reference fp32")
    profile(reference_step(meta, *small, device), device)
    print("\nprofile: bf16")
    profile(ours(small, "bf16")(), device)
    reference = results[f"reference fp32, batch {args.batch_size}"]
    same_batch = {k: v for k, v in results.items() if k.endswith(f"batch {args.batch_size}")}
    best = min(same_batch, key=same_batch.__getitem__)
    print(
        f"summary: step alone, b0 {args.size}x{args.size}: reference {reference * 1000:.1f} ms; fastest "
        f"SideFormer setting '{best}' {results[best] * 1000:.1f} ms ({reference / results[best]:.2f}x)"
    )


if __name__ == "__main__":
    main()
