"""Every input a user hands over, damaged: one clear line, a non-zero exit, no traceback, nothing
half-written.

Each case copies good inputs (a synthetic dataset, a trained model, a CVAT source), damages one file in one
way (empty, truncated, binary garbage, wrong types, wrong shapes) and runs the command that reads it through
`sideformer.cli.main`, as the console script does. It must end with exit code 2 and `sideformer: error: ...`
naming the damaged file (or value) (`check-data` instead lists the problem in its report and exits 1),
print no traceback, raise nothing, and leave the output it was asked to write absent (or unchanged, where
it existed before).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from sideformer.cli import main
from tests.integration.conftest import TINY
from tests.unit.test_aihub import make_source

pytestmark = pytest.mark.slow

GARBAGE = bytes(range(256)) * 4  # binary, not UTF-8, not any image or archive format


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(GARBAGE)
    else:
        raise ValueError(how)


def settings(*extra: str) -> list[str]:
    return [arg for s in [*TINY, "train.epochs=1", *extra] for arg in ("--set", s)]


@dataclass
class Inputs:
    """Fresh copies of good inputs for one case, under `root`."""

    root: Path
    dataset: Path
    model: Path

    @property
    def out(self) -> Path:
        return self.root / "out"


@dataclass
class Case:
    id: str
    damage: Callable[[Inputs], Path | str]
    """Damages one input; returns the file (or value) the error must name."""
    argv: Callable[[Inputs], list[str]]


def metadata(inputs: Inputs) -> Path:
    return inputs.dataset / "metadata.json"


def first(inputs: Inputs, split: str, kind: str) -> Path:
    entry = json.loads(metadata(inputs).read_text())["splits"][split][0][kind]
    return inputs.dataset / entry


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def file_damage(locate: Callable[[Inputs], Path], how: str) -> Callable[[Inputs], Path]:
    def apply(inputs: Inputs) -> Path:
        path = locate(inputs)
        damage(path, how)
        return path

    return apply


def check_data(inputs: Inputs) -> list[str]:
    return ["check-data", str(inputs.dataset)]


def train(inputs: Inputs) -> list[str]:
    return ["train", "--data", str(inputs.dataset), "--output", str(inputs.out), *settings()]


def predict(inputs: Inputs) -> list[str]:
    image = first(inputs, "valid", "image")
    return ["predict", "--model", str(inputs.model), "--input", str(image), "--output", str(inputs.out)]


def model_file(name: str) -> Callable[[Inputs], Path]:
    return lambda inputs: inputs.model / "final_ckpts/model" / name


def metadata_value(value: object) -> Callable[[Inputs], Path]:
    return lambda inputs: write_json(metadata(inputs), value)


def mask_of_shape(inputs: Inputs) -> Path:
    mask = first(inputs, "train", "mask")
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    return mask


def mask_16_bit(inputs: Inputs) -> Path:
    mask = first(inputs, "train", "mask")
    cv2.imwrite(str(mask), np.zeros((64, 64), np.uint16))
    return mask


def given_file(name: str, content: bytes) -> Callable[[Inputs], Path]:
    """A file the user passes by name (a config, a hyperparameter file), with this content."""

    def apply(inputs: Inputs) -> Path:
        path = inputs.root / name
        path.write_bytes(content)
        return path

    return apply


def config_file(text: bytes) -> Callable[[Inputs], Path]:
    return given_file("config.yaml", text)


def train_with_config(inputs: Inputs) -> list[str]:
    return [*train(inputs), "--config", str(inputs.root / "config.yaml")]


def set_value(setting: str) -> Case:
    return Case(
        f"--set {setting}",
        lambda inputs: setting.split("=")[0],
        lambda inputs: [*train(inputs), "--set", setting],
    )


def hyperparams(content: bytes) -> Callable[[Inputs], Path]:
    return given_file("best_hyperparams.json", content)


def final(inputs: Inputs) -> list[str]:
    return [
        "final",
        "--data",
        str(inputs.dataset),
        "--output",
        str(inputs.out),
        "--hyperparams-file",
        str(inputs.root / "best_hyperparams.json"),
        *settings(),
    ]


def checkpoint(how: str) -> Callable[[Inputs], Path]:
    def apply(inputs: Inputs) -> Path:
        path = inputs.out / "temp_ckpts/last.pth"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"PK\x03\x04" + GARBAGE)  # looks like the start of torch.save's zip
        damage(path, how)
        return path

    return apply


def resume(inputs: Inputs) -> list[str]:
    return [*train(inputs), "--resume"]


def video(how: str) -> Callable[[Inputs], Path]:
    def apply(inputs: Inputs) -> Path:
        path = inputs.root / "walk.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
        for i in range(4):
            writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
        writer.release()
        damage(path, how)
        return path

    return apply


def predict_video(inputs: Inputs) -> list[str]:
    video = str(inputs.root / "walk.mp4")
    return ["predict", "--model", str(inputs.model), "--input", video, "--output", str(inputs.out)]


def cvat_xml(how: str | bytes) -> Callable[[Inputs], Path]:
    def apply(inputs: Inputs) -> Path:
        src = make_source(inputs.root / "src", scenes=3)
        xml = src / "Surface_1/Surface_002/Surface_002.xml"
        if isinstance(how, bytes):
            xml.write_bytes(how)
        else:
            damage(xml, how)
        return xml

    return apply


def convert(inputs: Inputs) -> list[str]:
    return ["convert-aihub", "--src", str(inputs.root / "src"), "--out", str(inputs.out)]


def storage(url: str) -> Case:
    return Case(
        f"storage {url.split(':')[0]} {url[-12:]}",
        lambda inputs: url.split("://")[0] if "://" in url else url,
        lambda inputs: ["study", "create", "--storage", url, *settings()],
    )


CASES = [
    *[
        Case(f"metadata.json {how}", file_damage(metadata, how), command)
        for how in ("empty", "truncated", "garbage")
        for command in (check_data, train)
    ],
    Case("metadata.json classes not a list", metadata_value({"classes": 5, "splits": {}}), check_data),
    Case("metadata.json splits a list", metadata_value({"classes": ["a", "b"], "splits": [1]}), check_data),
    Case("metadata.json a list", metadata_value([1, 2, 3]), train),
    *[
        Case(f"image {how}", file_damage(lambda i: first(i, "train", "image"), how), command)
        for how in ("empty", "truncated", "garbage")
        for command in (check_data, train)
    ],
    *[
        Case(f"mask {how}", file_damage(lambda i: first(i, "train", "mask"), how), train)
        for how in ("empty", "truncated", "garbage")
    ],
    Case("mask of another size", mask_of_shape, train),
    Case("mask of 16 bits", mask_16_bit, train),
    Case("config.yaml garbage", config_file(GARBAGE), train_with_config),
    Case("config.yaml truncated", config_file(b"train:\n  epochs: [1, 2"), train_with_config),
    Case("config.yaml a list", config_file(b"- 1\n- 2\n"), train_with_config),
    Case("config.yaml wrong type", config_file(b"train: 5\n"), train_with_config),
    set_value("train.epochs=abc"),
    set_value("train.epochs="),
    set_value("model.variant=b9"),
    set_value("data.crop_size=[1]"),
    set_value("train"),
    Case("hyperparams empty", hyperparams(b""), final),
    Case("hyperparams truncated", hyperparams(b'{"optim.lr": 0.0'), final),
    Case("hyperparams garbage", hyperparams(GARBAGE), final),
    Case("hyperparams a list", hyperparams(b"[1, 2]"), final),
    Case("hyperparams wrong type", hyperparams(b'{"optim.lr": "fast"}'), final),
    Case("hyperparams unknown key", hyperparams(b'{"optim.lrr": 0.001}'), final),
    *[Case(f"checkpoint {how}", checkpoint(how), resume) for how in ("empty", "truncated", "garbage")],
    *[
        Case(f"model.safetensors {how}", file_damage(model_file("model.safetensors"), how), predict)
        for how in ("empty", "truncated", "garbage")
    ],
    *[
        Case(f"model config.json {how}", file_damage(model_file("config.json"), how), predict)
        for how in ("empty", "truncated", "garbage")
    ],
    Case(
        "model config.json wrong types",
        lambda i: write_json(model_file("config.json")(i), {"model_type": "segformer", "num_labels": "x"}),
        predict,
    ),
    Case("model sideformer.json garbage", file_damage(model_file("sideformer.json"), "garbage"), predict),
    Case(
        "model folder empty",
        lambda i: (shutil.rmtree(i.model / "final_ckpts"), i.model)[1],
        predict,
    ),
    *[
        Case(
            f"model.safetensors truncated ({command})",
            file_damage(model_file("model.safetensors"), "truncated"),
            argv,
        )
        for command, argv in (
            (
                "evaluate",
                lambda i: [
                    "evaluate",
                    "--model",
                    str(i.model),
                    "--data",
                    str(i.dataset),
                    "--split",
                    "valid",
                    "--output",
                    str(i.out),
                ],
            ),
            ("export", lambda i: ["export", "--model", str(i.model), "--onnx", str(i.out / "m.onnx")]),
        )
    ],
    *[Case(f"video {how}", video(how), predict_video) for how in ("empty", "truncated", "garbage")],
    *[Case(f"CVAT XML {how}", cvat_xml(how), convert) for how in ("empty", "truncated", "garbage")],
    Case("CVAT XML another root", cvat_xml(b"<annotations><meta/></annotations>"), convert),
    storage("notaurl"),
    storage("postgresql+psycopg2://user:secret@127.0.0.1:1/sideformer"),
    Case(  # its folder cannot be made: a file stands where it would be
        "storage sqlite under a file",
        lambda i: str(metadata(i)),
        lambda i: ["study", "create", "--storage", f"sqlite:///{metadata(i)}/study.db", *settings()],
    ),
    storage("mysql://user:secret@127.0.0.1:1/db"),
]


@pytest.fixture(scope="module")
def good(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dataset and a run folder (trained for one epoch) to copy and damage."""
    root = tmp_path_factory.mktemp("good")
    run = root / "run"
    assert main(["train", "--data", str(synth_dataset), "--output", str(run), *settings()]) == 0
    return synth_dataset, run


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_damaged_input_gets_one_clear_line(
    case: Case, good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = Inputs(tmp_path, tmp_path / "data", tmp_path / "run")
    shutil.copytree(good[0], inputs.dataset)
    shutil.copytree(good[1], inputs.model)
    named = str(case.damage(inputs))
    existed = inputs.out.exists()
    before = sorted(inputs.out.rglob("*")) if existed else []
    capsys.readouterr()

    try:
        code = main(case.argv(inputs))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()

    assert "Traceback" not in out + err
    if code == 1 and case.argv(inputs)[0] == "check-data":  # its report: one line per problem, exit 1
        problems = [line for line in out.splitlines() if line.lstrip().startswith("- ")]
        assert len(problems) == 1 and named in problems[0], f"the report does not name {named}:\n{out}"
    else:
        assert code == 2, f"exit {code}\n{out}\n{err}"
        error_lines = [line for line in err.splitlines() if line.startswith("sideformer: error:")]
        assert len(error_lines) == 1, f"expected one error line:\n{err}"
        # The line names the file or value; a dataset's problems follow it as a list, one line each.
        assert named in err, f"the error does not name {named}:\n{err}"
    if "secret" in " ".join(case.argv(inputs)):
        assert "secret" not in out + err, "a password in the storage URL was printed"
    if existed:
        assert sorted(inputs.out.rglob("*")) == before, "the failed command changed its output folder"
    else:
        assert not inputs.out.exists() or not any(inputs.out.iterdir()), (
            f"half-written output left behind: {sorted(inputs.out.rglob('*'))}"
        )
