"""`sideformer` command line: argument parsing only.

Heavy libraries (torch, transformers, wandb) are imported inside the commands that need them, so
`--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sideformer import __version__
from sideformer.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging()
    # Kubernetes and torchrun stop processes with SIGTERM: exit through Python so `finally` blocks
    # (temporary checkpoint files, W&B) clean up, as they do on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return args.handler(args, argv)
    except UserError as exc:
        print(f"sideformer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sideformer: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sideformer",
        description="SegFormer training for walking-environment segmentation.",
        epilog="Start with `sideformer demo`. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"sideformer {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="synthesise a small dataset and train a small model on it (CPU, a few minutes)"
    )
    demo.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="run folder (default: %(default)s)"
    )
    demo.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a demo setting, e.g. train.epochs=3",
    )
    demo.set_defaults(handler=_demo)

    synth = commands.add_parser("synth", help="write a synthetic street-scene dataset")
    synth.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    synth.add_argument("--train", type=int, default=200, help="training images (default: %(default)s)")
    synth.add_argument("--valid", type=int, default=40, help="validation images (default: %(default)s)")
    synth.add_argument("--test", type=int, default=0, help="test images (default: %(default)s)")
    synth.add_argument(
        "--size", type=_size, default=(256, 256), metavar="HxW", help="image size (default: 256x256)"
    )
    synth.add_argument("--seed", type=int, default=0, help="same seed, same files (default: %(default)s)")
    synth.set_defaults(handler=_synth)

    check = commands.add_parser("check-data", help="validate a dataset; lists every problem with its fix")
    check.add_argument("path", type=Path, help="dataset folder (holding metadata.json)")
    check.add_argument(
        "--classes", nargs="+", metavar="NAME", help="class names, for legacy metadata without them"
    )
    check.set_defaults(handler=_check_data)

    train = commands.add_parser(
        "train", help="train SegFormer on a dataset (one process, or DDP under torchrun)"
    )
    _add_config_args(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --output's last checkpoint if there is one (else start fresh)",
    )
    train.add_argument(
        "--nproc-per-node",
        metavar="N|auto",
        help="start torchrun with N processes on this machine (auto: one per GPU, else 1)",
    )
    train.set_defaults(handler=_train)

    show = commands.add_parser("config", help="print the resolved configuration (defaults, file, overrides)")
    show.add_argument("--config", type=Path, help="YAML config file")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(handler=_show_config)
    return parser


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (holding metadata.json)")
    parser.add_argument(
        "--output", required=True, help="run folder for checkpoints, logs and the final model"
    )
    parser.add_argument("--config", type=Path, help="YAML config file (see `sideformer config`)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.epochs=20 (repeatable)",
    )


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x256, got {text!r}") from None
    return height, width


def _setup_logging() -> None:
    # Only rank 0 speaks at INFO; the others report warnings and errors.
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "urllib3", "filelock", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _synth(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.data.synth import write_synthetic_dataset

    out = write_synthetic_dataset(args.out, args.train, args.valid, args.test, args.size, args.seed)
    print(f"wrote {args.train} train / {args.valid} valid / {args.test} test scenes to {out}")
    return 0


def _check_data(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.data.check import check_dataset, format_report
    from sideformer.data.metadata import load_metadata

    meta = load_metadata(args.path, classes=args.classes)
    report = check_dataset(meta)
    print(format_report(meta, report))
    return 0 if report.ok else 1


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.config import load_config

    config = load_config(args.config, args.overrides)  # fail on bad config before starting processes
    if args.nproc_per_node is not None:
        from sideformer.launch import relaunch_under_torchrun

        relaunch_under_torchrun(args.nproc_per_node, argv)  # returns only when one process suffices
    config.data.path, config.output = args.data, args.output

    from sideformer.train import train

    result = train(config, resume=args.resume)
    print(f"best epoch {result.best.epoch}: val mIoU {result.best.val_miou:.4f}; outputs in {result.output}")
    return 0


def _demo(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.demo import run_demo

    return run_demo(args.output, args.overrides)


def _show_config(args: argparse.Namespace, argv: list[str]) -> int:
    import yaml

    from sideformer.config import load_config

    print(yaml.safe_dump(load_config(args.config, args.overrides).to_dict(), sort_keys=False), end="")
    return 0
