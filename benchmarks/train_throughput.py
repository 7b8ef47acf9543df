"""Training throughput: SideFormer's loop vs a loop written the HF docs' way, in one run on one machine.

Both train SegFormer-b0 (random init, same SegformerConfig and labels) on the same synthetic images, with
the same batch size, loader workers, torch thread count, device and number of measured epochs (after one
warm-up epoch). Images/s cover the training epoch with data loading included and validation excluded.

What differs, on purpose (each side as it would really be used):
  - SideFormer decodes with OpenCV and augments (random scale 0.5-2x, crop, flip, colour jitter), ships
    uint8 tensors from the workers and normalises on the device; the reference opens files with PIL and
    runs SegformerImageProcessorPil (resize, rescale, normalise to float32) and does no augmentation.
  - SideFormer's AdamW has parameter groups (head lr x10, no decay on norms/biases), a poly schedule and
    fused=True (one kernel over all parameters); the reference uses plain AdamW(lr=6e-5), which on CPU
    runs PyTorch's default per-tensor loop.
  - SideFormer evaluates the decode head in an algebraically equivalent, cheaper order
    (sideformer.model.FoldedDecodeHead: same parameters, same outputs up to float rounding); the reference
    runs transformers' SegformerDecodeHead as shipped. --no-fold runs SideFormer without it.
  - SideFormer computes the loss itself (upsample + cross-entropy with ignore_index); the reference passes
    labels= so the model does the same computation.
What is aligned although the HF docs do otherwise: the reference loader uses the same num_workers,
persistent workers, pin_memory and drop_last as SideFormer's, so the comparison is about the loops.

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from machine import describe, machine_info, peak_rss_mib, write_json  # benchmarks/machine.py
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from transformers import SegformerImageProcessorPil

from sideformer.compile_choice import choose_compile
from sideformer.config import Config, ModelConfig, load_config
from sideformer.data.device_augment import EncodedBatch
from sideformer.data.metadata import DatasetMeta, load_metadata
from sideformer.data.synth import write_synthetic_dataset
from sideformer.distributed import DistEnv
from sideformer.model import autocast_dtype, build_model, normalize, training_loss
from sideformer.train import build_optimizer, train
from sideformer.train_data import train_loader

Batch = tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]  # SideFormer's | the reference's


def sideformer_config(args: argparse.Namespace, data: Path, output: Path, device: str) -> Config:
    height, width = args.size
    return load_config(
        base={
            "output": str(output),
            "data": {
                "path": str(data),
                "crop_size": [height, width],
                "num_workers": args.workers,
                "decode": args.decode,
            },
            "model": {
                "variant": args.variant,
                "fold_decode_head": not args.no_fold,
                "channels_last": args.channels_last,
            },
            "optim": {"warmup_steps": 0},  # the schedule's shape does not change the cost of a step
            "train": {
                "epochs": 1 + args.epochs,
                "batch_size": args.batch_size,
                "device": device,
                "precision": args.precision,
                "compile": "auto" if args.defaults else args.compile,
                "compile_mode": args.compile_mode,
            },
            "early_stop": {"patience": 0},
            "wandb": {"enabled": False},
        }
    )


def sideformer_loader(config: Config, meta: DatasetMeta, device: torch.device) -> DataLoader:
    """SideFormer's training DataLoader, built by training's own function (single process)."""
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    return train_loader(meta.split("train"), meta, config, env)


class HFDocsDataset(Dataset):
    """PIL decoding + SegformerImageProcessorPil (resize, rescale, normalise), as in the HF docs."""

    def __init__(self, meta: DatasetMeta, size: tuple[int, int]) -> None:
        self.samples = meta.split("train")
        self.processor = SegformerImageProcessorPil(
            size={"height": size[0], "width": size[1]}, do_reduce_labels=False
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        image, mask = Image.open(sample.image).convert("RGB"), Image.open(sample.mask)
        encoded = self.processor(images=image, segmentation_maps=mask, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": encoded["labels"][0]}


def loader_like_sideformer(
    dataset: Dataset, config: Config, collate: Any, init: Any, device: torch.device
) -> DataLoader:
    """Shuffle, workers, persistence, pinning and drop_last exactly as train.py sets them."""
    workers, batch = config.data.num_workers, config.train.batch_size
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(config.train.seed)),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=len(dataset) > batch,  # type: ignore[arg-type]
        worker_init_fn=init,
        persistent_workers=workers > 0,
    )


def reference_model(variant: str, meta: DatasetMeta, device: torch.device) -> torch.nn.Module:
    """SegFormer exactly as transformers ships it (no folded decode head)."""
    torch.manual_seed(0)
    config = ModelConfig(variant=variant, fold_decode_head=False)
    return build_model(config, meta.id2label, meta.ignore_index).to(device)


def reference_training(
    loader: DataLoader, meta: DatasetMeta, device: torch.device, epochs: int, variant: str
) -> list[float]:
    """The HF docs' loop: the model computes its own loss from labels=. Returns img/s per measured epoch."""
    model = reference_model(variant, meta, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
    model.train()
    rates = []
    for _ in range(1 + epochs):  # the first epoch is warm-up
        started, seen = time.perf_counter(), 0
        for batch in loader:
            pixel_values = batch["pixel_values"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            loss = model(pixel_values=pixel_values, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize()  # SideFormer's timer does not wait for the last queued steps
        rates.append(seen / (time.perf_counter() - started))
    return rates[1:]


def step_times(config: Config, meta: DatasetMeta, device: torch.device, steps: int) -> dict[str, list[float]]:
    """Seconds per training step on pre-loaded tensors (no data loading), the two steps alternating:
    where the end-to-end difference comes from. SideFormer's step is train.py's (its model options,
    fused AdamW with parameter groups, normalisation on the device, its own loss); the reference's is the
    HF docs' (model as shipped, labels=, plain AdamW)."""
    height, width = config.data.crop_size
    batch = config.train.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, meta.num_classes, (batch, height, width), generator=generator).to(device)
    images = images.to(device)
    reference = reference_model(config.model.variant, meta, device).train()
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=6e-5)
    torch.manual_seed(0)
    ours = build_model(config.model, meta.id2label, meta.ignore_index).to(device).train()
    if config.model.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(ours, config, fused=device.type in ("cuda", "cpu"))
    dtype = autocast_dtype(config.train.precision, device)
    compiled = choose_compile(config.train, device.type, world_size=1)  # as train.py decides it
    graphs = compiled.cuda_graphs
    forward = torch.compile(ours, mode=compiled.mode) if compiled.enabled else ours

    def reference_step() -> None:
        pixels = normalize(images)  # the reference's loader delivers normalised floats: same input
        reference(pixel_values=pixels, labels=labels).loss.backward()
        reference_optimizer.step()
        reference_optimizer.zero_grad()

    def sideformer_step() -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, _ = training_loss(forward, images, labels, meta.ignore_index, dtype, config.model.channels_last)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"sideformer": [], "reference": []}
    steps_by_name = {"sideformer": sideformer_step, "reference": reference_step}
    for step in steps_by_name.values():  # warm-up (and compilation)
        step()
    for _ in range(steps):
        for name, step in steps_by_name.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - started)
    return times


def loader_rate(loader: DataLoader, warmup: int, batches: int, device: torch.device | None = None) -> float:
    """Images/s of iterating `loader` (across epochs) for `batches` batches after `warmup` batches."""

    def endless() -> Iterator[Batch]:
        while True:
            yield from loader

    stream = endless()

    def deliver(batch: Batch) -> int:
        if isinstance(batch, tuple) and isinstance(batch[0], EncodedBatch):  # data.decode=device:
            batch[0].to(device or "cpu")  # decoding and augmenting on the device is this pipeline's
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize()
        return len(batch["labels"]) if isinstance(batch, dict) else len(batch[0])

    for _ in range(warmup):
        deliver(next(stream))
    started, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += deliver(next(stream))
    rate = seen / (time.perf_counter() - started)
    stream.close()
    return rate


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=(256, 256), help="image size HxW (256x256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=64, help="training images (64)")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs, after one warm-up epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for both loops")
    parser.add_argument("--loader-batches", type=int, default=40, help="batches timed per data pipeline")
    parser.add_argument("--rounds", type=int, default=1, help="alternate [1] and [2] this many times")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--variant", default="b0", choices=["b0", "b1", "b2", "b3", "b4", "b5"])
    parser.add_argument(
        "--precision",
        choices=["fp32", "auto", "bf16"],
        default="fp32",
        help="SideFormer's (auto: bf16 on GPU); the reference always runs fp32, as the HF docs do",
    )
    parser.add_argument("--channels-last", action="store_true", help="SideFormer with model.channels_last")
    parser.add_argument("--compile", action="store_true", help="SideFormer with train.compile")
    parser.add_argument(
        "--compile-mode", default="default", choices=["auto", "default", "reduce-overhead", "max-autotune"]
    )
    parser.add_argument(
        "--decode", default="loader", choices=["auto", "loader", "device"], help="SideFormer's data.decode"
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="SideFormer as a user gets it: precision, train.compile, compile_mode and data.decode all auto",
    )
    parser.add_argument("--no-fold", action="store_true", help="SideFormer without the folded decode head")
    parser.add_argument(
        "--step-batches", type=int, default=4, help="steps timed per loop on pre-loaded tensors (0: skip)"
    )
    parser.add_argument("--skip-loader", action="store_true", help="leave out [3], the pipelines alone")
    parser.add_argument("--quick", action="store_true", help="16 images at 128x128, 1 measured epoch")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if min(args.batch_size, args.images, args.epochs, args.loader_batches, args.rounds, args.threads) < 1:
        parser.error("--batch-size, --images, --epochs, --loader-batches, --rounds, --threads must be >= 1")
    if args.quick:
        args.images, args.size, args.epochs, args.loader_batches, args.step_batches = 16, (128, 128), 1, 8, 1
    if args.defaults:
        args.precision, args.compile_mode, args.decode = "auto", "auto", "auto"
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    info = machine_info() | {"transformers": transformers.__version__}
    print(f"machine: {describe(info)}, transformers {info['transformers']}")
    # What train() will choose for these settings (the data path is not read here).
    chosen = choose_compile(sideformer_config(args, Path(), Path(), device.type).train, device.type, 1)
    options = [
        f"precision {args.precision}",
        f"data.decode {args.decode}",
        "folded head" if not args.no_fold else "transformers' head",
        *(["channels_last"] if args.channels_last else []),
        *([chosen.describe()] if chosen.enabled else []),
    ]
    print(
        f"settings: {args.variant} random init, {args.images} images {args.size[0]}x{args.size[1]}, batch "
        f"{args.batch_size}, {args.workers} workers, 1 warm-up + {args.epochs} measured epoch(s), {device}; "
        f"SideFormer: {', '.join(options)}; reference: fp32, as shipped"
    )
    print(
        "note: SideFormer augments (scale/crop/flip/jitter) while the reference only resizes: the realistic "
        "comparison, not identical work per image"
    )

    with tempfile.TemporaryDirectory(prefix="sideformer-bench-") as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", train=args.images, valid=8, size=args.size)
        meta = load_metadata(data)
        sideformer_rates: list[float] = []
        reference_rates: list[float] = []
        startup: list[float] = []
        # Rounds alternate the two loops, so load from other processes on a shared machine hits both alike.
        for round_ in range(1, args.rounds + 1):
            config = sideformer_config(args, data, Path(tmp) / f"run{round_}", device.type)
            print(
                f"\n[1] SideFormer end to end: sideformer.train.train(config), round {round_}/{args.rounds}"
            )
            result = train(config)
            rates = [h.images_per_second for h in result.history[1:]]
            print(f"  sideformer  {', '.join(f'{r:.2f}' for r in rates)} img/s (measured epochs)")
            # What the first epoch costs beyond a later one: compiling, CUDA graph capture, worker start.
            startup.append(result.history[0].seconds - statistics.mean(h.seconds for h in result.history[1:]))
            print(f"  start-up    {startup[-1]:.1f} s (warm-up epoch minus a measured one)")
            sideformer_rates += rates
            del result
            gc.collect()

            print(f"\n[2] reference loop, written the HF docs' way, round {round_}/{args.rounds}")
            reference = loader_like_sideformer(HFDocsDataset(meta, args.size), config, None, None, device)
            rates = reference_training(reference, meta, device, args.epochs, args.variant)
            print(f"  reference   {', '.join(f'{r:.2f}' for r in rates)} img/s (measured epochs)")
            reference_rates += rates
            del reference
            gc.collect()  # persistent workers end with their loader

        loader: dict[str, float] = {}
        if not args.skip_loader:
            print("\n[3] data pipelines alone (no model)")
            ours = sideformer_loader(config, meta, device)
            theirs = loader_like_sideformer(HFDocsDataset(meta, args.size), config, None, None, device)
            warmup = len(ours)  # one epoch: workers started, prefetch queues in steady state
            loader = {"sideformer": loader_rate(ours, warmup, args.loader_batches, device)}
            loader["reference"] = loader_rate(theirs, warmup, args.loader_batches)
            del ours, theirs
            gc.collect()  # persistent workers end with their loaders
            for name, rate in loader.items():
                print(f"  {name:<11} {rate:7.1f} img/s over {args.loader_batches} batches")

        steps: dict[str, list[float]] = {}
        if args.step_batches:
            print(
                f"\n[4] one training step alone on pre-loaded tensors, {args.step_batches} each, alternating"
            )
            steps = step_times(config, meta, device, args.step_batches)
            for name, seconds in steps.items():
                print(
                    f"  {name:<11} {statistics.median(seconds):7.3f} s/step median "
                    f"({', '.join(f'{t:.3f}' for t in seconds)})"
                )

        assert torch.get_num_threads() == args.threads, "a run changed the torch thread count"

    ours_rate, theirs_rate = statistics.mean(sideformer_rates), statistics.mean(reference_rates)
    print("\nresults (img/s, mean of measured epochs, all rounds; data loading in, validation out)")
    print(f"  sideformer  {ours_rate:7.2f}   per epoch: {', '.join(f'{r:.2f}' for r in sideformer_rates)}")
    print(f"  reference   {theirs_rate:7.2f}   per epoch: {', '.join(f'{r:.2f}' for r in reference_rates)}")
    memory = f"peak RSS of the process {peak_rss_mib():.0f} MiB (both loops)"
    if device.type == "cuda":
        memory += f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    print(f"  {memory}")
    summary = (
        f"summary: {args.variant} {args.size[0]}x{args.size[1]} sideformer {ours_rate:.1f} img/s vs "
        f"reference {theirs_rate:.1f} img/s ({ours_rate / theirs_rate:.2f}x)"
    )
    if loader:
        summary += (
            f"; data loader {loader['sideformer']:.0f} img/s vs {loader['reference']:.0f} img/s "
            f"({loader['sideformer'] / loader['reference']:.1f}x), {loader['sideformer'] / ours_rate:.0f}x "
            f"the training rate"
        )
    if steps:
        ours_step, theirs_step = (statistics.median(steps[k]) for k in ("sideformer", "reference"))
        summary += f"; step alone {ours_step:.3f} vs {theirs_step:.3f} s ({theirs_step / ours_step:.2f}x)"
    summary += f"; start-up {statistics.mean(startup):.1f} s"
    print(summary)
    if args.json:
        write_json(
            args.json,
            args,
            machine=info,
            settings={"device": device.type},
            train_images_per_second={
                "sideformer": {"mean": ours_rate, "epochs": sideformer_rates},
                "reference": {"mean": theirs_rate, "epochs": reference_rates},
            },
            loader_images_per_second=loader,
            startup_seconds=startup,
            step_seconds=steps,
            peak_rss_mib=peak_rss_mib(),
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
