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
from typing import Any, NoReturn

from sideformer import __version__
from sideformer.atomic import DiskFull, is_disk_full
from sideformer.errors import Stopped, UserError, first_line
from sideformer.rejoin import LOST_PEER_EXIT, report_exit


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging()
    # Kubernetes and torchrun stop processes with SIGTERM: exit through Python so `finally` blocks
    # (temporary checkpoint files, W&B) clean up, as they do on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    code = 1  # an exception that escapes is a bug
    try:
        code = _run(args, argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        raise
    except Exception as exc:  # a bug, with its trace, unless a peer of the group went away
        if _lost_a_peer(exc):
            _peer_lost(exc)
        raise
    finally:
        report_exit(code)  # to the supervisor of a multi-pod group, if there is one (`rejoin`)
    return code


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        return args.handler(args, argv)
    except DiskFull as exc:
        # `train` without --resume refuses a folder holding a checkpoint: say what continues the run.
        again = " Add --resume to continue from the last checkpoint." if _resumable(args) else ""
        print(f"sideformer: error: {exc}{again}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"sideformer: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        if os.environ.get("RANK", "0") == "0":  # every rank stops at the same step: one says so
            print(f"sideformer: {exc}", file=sys.stderr)
        return Stopped.exit_code
    except KeyboardInterrupt:
        print("sideformer: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if is_disk_full(exc):  # a write outside `atomic` (a library's own file): still one line
            where = f"{exc.filename}: " if exc.filename else ""
            print(
                f"sideformer: error: {where}the disk is full ({exc.strerror}); free some space and "
                "run the same command again.",
                file=sys.stderr,
            )
            return 2
        if exc.filename is None:  # not about a file we were given: a bug to report, with its trace
            raise
        print(f"sideformer: error: {exc.filename}: {exc.strerror}{_access_hint(exc)}", file=sys.stderr)
        return 2


def _resumable(args: argparse.Namespace) -> bool:
    return args.handler is _train and not args.resume


def _lost_a_peer(exc: BaseException) -> bool:
    if "torch.distributed" not in sys.modules:  # nothing distributed ran: it cannot be a peer
        return False
    from sideformer.distributed import lost_a_peer

    return lost_a_peer(exc)


def _peer_lost(exc: BaseException) -> NoReturn:
    print(f"sideformer: lost a peer of the training group: {first_line(exc)}", file=sys.stderr)
    report_exit(LOST_PEER_EXIT)
    sys.stdout.flush()
    sys.stderr.flush()
    # What is left of a group with a dead peer (DDP's pending reductions, gloo's connections) can block
    # in its destructors until torchrun's SIGKILL 30 s later (measured): leave without running them.
    os._exit(LOST_PEER_EXIT)


def _access_hint(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return (
            f". This process runs as uid {os.getuid()}: make the file readable (and its folder writable, "
            "for outputs) to that user, e.g. with chmod or a pod's fsGroup."
        )
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sideformer",
        description="SegFormer training for walking-environment segmentation.",
        epilog="Start with `sideformer demo`. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"sideformer {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # The order here is the order of `sideformer --help`.
    for add_commands in (
        _add_data_commands,
        _add_training_commands,
        _add_study_commands,
        _add_model_commands,
        _add_convert_command,
        _add_config_command,
    ):
        add_commands(commands)
    return parser


Commands = Any  # argparse's _SubParsersAction, which it does not export


def _add_data_commands(commands: Commands) -> None:
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


def _add_training_commands(commands: Commands) -> None:
    train = commands.add_parser(
        "train", help="train SegFormer on a dataset (one process, or DDP under torchrun)"
    )
    _add_config_args(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --output's last checkpoint if there is one (else start fresh); with a larger "
        "train.epochs, train on to it",
    )
    train.set_defaults(handler=_train)

    tune = commands.add_parser(
        "tune", help="hyperparameter search, then the final training with the best parameters"
    )
    _add_config_args(tune)
    _add_study_args(tune, runs_trials=True)
    tune.add_argument("--skip-hyperopt", action="store_true", help="skip the search; read --hyperparams-file")
    tune.add_argument(
        "--hyperparams-file",
        type=Path,
        help="best parameters to train with (default: OUTPUT/best_hyperparams.json)",
    )
    tune.set_defaults(handler=_tune)

    search = commands.add_parser(
        "search", help="run trials until the study's budget is met (what each cluster tune worker runs)"
    )
    _add_config_args(search)
    _add_study_args(search, runs_trials=True)
    search.add_argument(
        "--trials-per-gpu",
        type=int,
        help="run this many trials side by side on one GPU, each its own process with 1/N of its memory "
        "(search.trials_per_gpu; for small variants that leave a large GPU mostly idle)",
    )
    search.set_defaults(handler=_search)

    final = commands.add_parser(
        "final", help="train on train+valid with the best parameters of a study or a best_hyperparams.json"
    )
    _add_config_args(final)
    _add_study_args(final)
    final.add_argument(
        "--hyperparams-file", type=Path, help="read the parameters from this file, not the study"
    )
    final.set_defaults(handler=_final)


def _add_study_commands(commands: Commands) -> None:
    study = commands.add_parser("study", help="create, inspect, report on or export an Optuna study")
    study_commands = study.add_subparsers(title="study commands", metavar="ACTION", required=True)
    create = study_commands.add_parser("create", help="create the study if it does not exist (idempotent)")
    best = study_commands.add_parser("best", help="print the best trial's parameters as JSON")
    best.add_argument("--out", type=Path, help="also write them to this file (best_hyperparams.json format)")
    export = study_commands.add_parser("export", help="write every trial as one JSON object per line")
    export.add_argument("--out", type=Path, required=True, help="JSON-lines file to write")
    report = study_commands.add_parser(
        "report",
        help="print the top trials and write PNGs: best value over time, parameter importances, "
        "intermediate values of pruned vs finished trials",
    )
    report.add_argument("--output", type=Path, help="folder for the PNGs (default: ./STUDY-report)")
    report.add_argument("--top", type=int, default=10, help="trials in the table (default: %(default)s)")
    subs = ((create, _study_create), (best, _study_best), (export, _study_export), (report, _study_report))
    _add_study_start_args(create)
    for sub, handler in subs:
        _add_study_args(sub, required_storage=True)
        sub.add_argument("--config", type=Path, help="YAML config (its search section: objective, space)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        sub.set_defaults(handler=handler)


def _add_model_commands(commands: Commands) -> None:
    """The commands that use a trained model: predict, evaluate, report, export."""
    predict = commands.add_parser(
        "predict", help="segment images, folders or videos with a trained model (masks and overlays)"
    )
    _add_model_args(predict)
    predict.add_argument("--input", type=Path, required=True, help="an image, a video, or a folder of them")
    predict.add_argument("--output", type=Path, required=True, help="folder for masks/ and overlays/")
    predict.add_argument(
        "--size",
        type=_inference_size,
        metavar="N|HxW",
        help="inference resolution: shorter side N (aspect kept) or exactly HxW (default: training's size)",
    )
    predict.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    predict.add_argument("--workers", type=int, default=2, help="image decoding processes (default: 2)")
    predict.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default: 0.5)")
    predict.add_argument("--no-masks", dest="masks", action="store_false", help="write overlays only")
    predict.add_argument("--no-overlays", dest="overlays", action="store_false", help="write masks only")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="per-class IoU, confusion matrix and worst predictions of a model on a dataset split"
    )
    _add_model_args(evaluate)
    evaluate.add_argument("--data", type=Path, required=True, help="dataset folder (holding metadata.json)")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    evaluate.add_argument(
        "--output", type=Path, help="report folder (default: RUN/evaluation/SPLIT beside the model)"
    )
    evaluate.add_argument(
        "--size", type=int, metavar="N", help="shorter side images are resized to (default: training's)"
    )
    evaluate.add_argument("--batch-size", type=int, help="default: the training's validation batch size")
    evaluate.add_argument("--workers", type=int, default=2, help="data loading processes (default: 2)")
    evaluate.add_argument(
        "--worst", type=int, default=6, help="worst images shown in worst_predictions.png (default: 6)"
    )
    evaluate.set_defaults(handler=_evaluate)

    report = commands.add_parser("report", help="draw a run's training curves (loss, mIoU) as a PNG")
    report.add_argument("--run", type=Path, required=True, help="run folder (the --output of train)")
    report.add_argument("--out", type=Path, help="PNG to write (default: RUN/training_curves.png)")
    report.set_defaults(handler=_report)

    export = commands.add_parser(
        "export", help="export a trained model to ONNX, checked against PyTorch with onnxruntime"
    )
    export.add_argument(
        "--model", type=Path, required=True, help="run folder (final_ckpts/model inside) or model folder"
    )
    export.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    export.add_argument(
        "--size", type=int, metavar="N", help="check size, shorter side (default: training's)"
    )
    export.add_argument(
        "--atol", type=float, default=1e-3, help="largest logit difference accepted (default: %(default)g)"
    )
    export.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx exporter (default: %(default)s, fast; dynamo needs onnxscript)",
    )
    export.add_argument("--opset", type=int, help="ONNX opset (default: 17, or 18 with dynamo)")
    export.set_defaults(handler=_export)


def _add_convert_command(commands: Commands) -> None:
    convert = commands.add_parser(
        "convert-aihub",
        help="convert AI-Hub Surface Masking (CVAT XML 1.1) into a dataset folder",
        description="Convert AI-Hub Surface Masking scenes (folders holding frames, a CVAT XML 1.1 file and "
        "MASK/) into the metadata.json layout, split by scene folder.",
    )
    convert.add_argument("--src", type=Path, required=True, help="the unpacked archives (searched for *.xml)")
    convert.add_argument("--out", type=Path, required=True, help="dataset folder to create (new or empty)")
    convert.add_argument(
        "--from",
        dest="source",
        choices=("polygons", "masks"),
        default="polygons",
        help="draw masks from the XML's shapes, or decode the colour masks in MASK/ (default: %(default)s)",
    )
    convert.add_argument("--valid", type=float, default=0.1, help="share of scenes for valid (default: 0.1)")
    convert.add_argument("--test", type=float, default=0.1, help="share of scenes for test (default: 0.1)")
    convert.add_argument("--seed", type=int, default=0, help="scene shuffle seed (default: %(default)s)")
    convert.add_argument(
        "--polylines",
        choices=("fill", "line", "skip"),
        default="fill",
        help="polylines are closed and filled, drawn as lines, or left out (default: %(default)s)",
    )
    convert.add_argument(
        "--line-width", type=int, default=3, help="pixels, for --polylines line (default: 3)"
    )
    convert.add_argument(
        "--unknown",
        choices=("error", "ignore"),
        default="error",
        help="a label outside the 22 classes stops the conversion, or is painted ignore (255)",
    )
    convert.add_argument(
        "--skip-missing", action="store_true", help="leave out frames whose image is missing on disk"
    )
    convert.add_argument(
        "--link",
        choices=("copy", "hardlink", "symlink"),
        default="copy",
        help="how images get into --out (default: %(default)s)",
    )
    convert.set_defaults(handler=_convert_aihub)


def _add_config_command(commands: Commands) -> None:
    show = commands.add_parser("config", help="print the resolved configuration (defaults, file, overrides)")
    show.add_argument("--config", type=Path, help="YAML config file")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(handler=_show_config)


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
    parser.add_argument(
        "--nproc-per-node",
        metavar="N|auto",
        help="start torchrun with N processes on this machine (auto: one per GPU, else 1)",
    )


def _add_study_args(
    parser: argparse.ArgumentParser, required_storage: bool = False, runs_trials: bool = False
) -> None:
    where = "required unless OPTUNA_STORAGE is set" if required_storage else "default: sqlite in --output"
    parser.add_argument(
        "--storage", help=f"Optuna storage URL, e.g. postgresql+psycopg2://USER:PASS@HOST/DB ({where})"
    )
    parser.add_argument("--study", default="sideformer", help="study name (default: %(default)s)")
    if runs_trials:
        parser.add_argument(
            "--n-trials", type=int, help="the study's budget of finished trials (search.n_trials)"
        )
        parser.add_argument("--seed", type=int, help="sampler seed (default: random, distinct per worker)")
        _add_study_start_args(parser)


def _add_study_start_args(parser: argparse.ArgumentParser) -> None:
    """What a new study starts with; applied by whoever creates it (later workers only read it)."""
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="wall-clock budget beside the trial count (search.timeout): no trial starts after it; the "
        "deadline is stored in the study when it starts and shared by all its workers",
    )
    parser.add_argument(
        "--warm-start",
        metavar="FROM",
        help="seed a new study with earlier results: a best_hyperparams.json, a study name in --storage, "
        "or STORAGE_URL#STUDY (its 3 best trials); they run first",
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, required=True, help="run folder (final_ckpts/model inside) or model folder"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: a GPU when there is one"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on GPU, fp32 on CPU, as in training",
    )


def _inference_size(text: str) -> int | tuple[int, int]:
    if "x" not in text.lower():
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected N or HxW such as 512 or 512x1024, got {text!r}"
            ) from None
        if value < 32:
            raise argparse.ArgumentTypeError(f"size must be >= 32 pixels, got {value}")
        return value
    height, width = _size(text)
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"size must be >= 32 pixels each way, got {text!r}")
    return height, width


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds such as 3600, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


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


def _predict(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.predict import format_summary, predict
    from sideformer.trained_model import load_trained_model

    model = load_trained_model(args.model, args.device, args.precision)
    summary = predict(
        model,
        args.input,
        args.output,
        size=args.size,
        batch_size=args.batch_size,
        workers=args.workers,
        masks=args.masks,
        overlays=args.overlays,
        alpha=args.alpha,
    )
    print(format_summary(summary))
    return 0


def _evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.evaluate import evaluate_model, format_evaluation

    evaluation = evaluate_model(
        args.model,
        args.data,
        args.split,
        out=args.output,
        size=args.size,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        worst=args.worst,
        workers=args.workers,
    )
    print(format_evaluation(evaluation))
    return 0


def _report(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.curves import describe_curves, read_history, write_training_curves

    path = write_training_curves(args.run, args.out)
    print(describe_curves(read_history(args.run), path))
    return 0


def _export(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.export import export_onnx, format_export

    result = export_onnx(args.model, args.onnx, args.size, args.atol, args.exporter, args.opset)
    print(format_export(result))
    return 0


def _convert_aihub(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.data.aihub import convert_aihub, format_summary

    summary = convert_aihub(
        args.src,
        args.out,
        source=args.source,
        valid=args.valid,
        test=args.test,
        seed=args.seed,
        polylines=args.polylines,
        line_width=args.line_width,
        unknown=args.unknown,
        skip_missing=args.skip_missing,
        link=args.link,
    )
    print(format_summary(summary))
    return 0


def _check_data(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.data.check import check_dataset, format_check
    from sideformer.data.metadata import load_metadata

    meta = load_metadata(args.path, classes=args.classes)
    check = check_dataset(meta)
    print(format_check(meta, check))
    return 0 if check.ok else 1


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    config = _run_config(args, argv)
    from sideformer import distributed
    from sideformer.train import train

    with distributed.process_group(config.train.device) as env:
        result = train(config, resume=args.resume, env=env)
    print(f"best epoch {result.best.epoch}: val mIoU {result.best.val_miou:.4f}; outputs in {result.output}")
    return 0


def _run_config(args: argparse.Namespace, argv: list[str]):  # -> Config
    """The validated config (bad settings fail before any process starts), under torchrun if asked."""
    from sideformer.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "n_trials", None) is not None:
        overrides.append(f"search.n_trials={args.n_trials}")
    if getattr(args, "trials_per_gpu", None) is not None:
        overrides.append(f"search.trials_per_gpu={args.trials_per_gpu}")
    if getattr(args, "timeout", None) is not None:
        overrides.append(f"search.timeout={args.timeout}")
    config = load_config(args.config, overrides)
    from sideformer import trial_slots
    from sideformer.launch import relaunch_under_torchrun

    side_by_side = config.search.trials_per_gpu > 1 and trial_slots.slot() is None
    if side_by_side and args.handler is _tune:
        raise UserError(
            f"search.trials_per_gpu={config.search.trials_per_gpu}: `sideformer tune` runs its search in one "
            "process; run `sideformer search --trials-per-gpu N`, then `sideformer final`."
        )
    if side_by_side and args.handler is _search:
        trial_slots.check_can_share(config.search.trials_per_gpu, args.nproc_per_node)
    else:  # the slots' supervisor stays one plain process; each slot is one process alone
        relaunch_under_torchrun(args.nproc_per_node, argv)  # returns only when one process suffices
    config.data.path, config.output = args.data, args.output
    return config


def _search(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer import distributed, trial_slots
    from sideformer.study import resolve_storage_url
    from sideformer.tune import run_search

    config = _run_config(args, argv)
    storage = resolve_storage_url(args.storage, config.output)
    if config.search.trials_per_gpu > 1 and trial_slots.slot() is None:
        return trial_slots.run_side_by_side(config.search.trials_per_gpu, argv, args.seed)
    with distributed.process_group(config.train.device) as env:
        trial_slots.limit_memory(env.device.type)
        run_search(config, storage, args.study, env, seed=args.seed, warm_start=args.warm_start)
    return 0


def _final(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer import distributed
    from sideformer.tune import best_for_final, run_final

    config = _run_config(args, argv)
    with distributed.process_group(config.train.device) as env:
        best = distributed.on_main(
            env, lambda: best_for_final(config, args.storage, args.study, args.hyperparams_file)
        )
        result = run_final(config, best, env=env)
    _print_final(result)
    return 0


def _tune(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer import distributed
    from sideformer.rundir import RunDir
    from sideformer.study import resolve_storage_url
    from sideformer.tune import read_hyperparams, run_final, run_search

    config = _run_config(args, argv)
    hyperparams_file = args.hyperparams_file or RunDir(config.output).hyperparams
    storage = None if args.skip_hyperopt else resolve_storage_url(args.storage, config.output)
    if args.skip_hyperopt:
        read_hyperparams(hyperparams_file)  # a bad file fails now, before any process starts
    with distributed.process_group(config.train.device) as env:
        if storage is not None:
            run_search(config, storage, args.study, env, seed=args.seed, warm_start=args.warm_start)
            distributed.on_main(env, lambda: _report_search(storage, args.study, config))
        best = distributed.on_main(env, lambda: read_hyperparams(hyperparams_file))
        result = run_final(config, best, env=env)
    _print_final(result)
    return 0


def _report_search(storage_url: str, study_name: str, config) -> None:
    """The end-of-search report of `tune`: the top trials, and PNGs in OUTPUT/search_report/."""
    from sideformer.study import load_study, open_storage
    from sideformer.study_report import describe, write_study_report

    study = load_study(open_storage(storage_url, config.search), study_name)
    report = write_study_report(study, Path(config.output) / "search_report")
    print(describe(report, study_name))


def _print_final(result) -> None:
    best = result.best
    print(f"final model after {best.epoch} epoch(s): mIoU {best.val_miou:.4f}; outputs in {result.output}")


def _admin_config(args: argparse.Namespace):  # -> Config
    from sideformer.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "timeout", None) is not None:
        overrides.append(f"search.timeout={args.timeout}")
    return load_config(args.config, overrides)


def _study_storage(args: argparse.Namespace):  # -> (RDBStorage, Config)
    from sideformer.study import admin_storage_url, open_storage

    url = admin_storage_url(args.storage)
    config = _admin_config(args)
    return open_storage(url, config.search), config


def _study_create(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.study import admin_storage_url, redact
    from sideformer.tune import open_study, parse_space

    config = _admin_config(args)
    url = admin_storage_url(args.storage)
    study = open_study(
        config, parse_space(config.search.space), url, args.study, args.warm_start, warn_if_existed=True
    )
    print(
        f"study {study.study_name!r} ({study.direction.name.lower()} {config.search.objective}) is ready "
        f"with {len(study.trials)} trial(s) in {redact(args.storage or os.environ['OPTUNA_STORAGE'])}"
    )
    return 0


def _study_best(args: argparse.Namespace, argv: list[str]) -> int:
    import json

    from sideformer.atomic import atomic_write_json
    from sideformer.study import load_study
    from sideformer.tune import best_hyperparams

    storage, config = _study_storage(args)
    best = best_hyperparams(load_study(storage, args.study), config.search)
    if args.out:
        atomic_write_json(args.out, best)
    print(json.dumps(best, indent=2))
    return 0


def _study_export(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.study import export_trials, load_study

    storage, _ = _study_storage(args)
    count = export_trials(load_study(storage, args.study), args.out)
    print(f"wrote {count} trial(s) of study {args.study!r} to {args.out}")
    return 0


def _study_report(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.study import load_study
    from sideformer.study_report import describe, write_study_report

    storage, _ = _study_storage(args)
    study = load_study(storage, args.study)
    report = write_study_report(study, args.output or Path(f"{args.study}-report"), args.top)
    print(describe(report, args.study))
    return 0


def _demo(args: argparse.Namespace, argv: list[str]) -> int:
    from sideformer.demo import run_demo

    return run_demo(args.output, args.overrides)


def _show_config(args: argparse.Namespace, argv: list[str]) -> int:
    import yaml

    from sideformer.config import load_config

    print(yaml.safe_dump(load_config(args.config, args.overrides).to_dict(), sort_keys=False), end="")
    return 0
