"""predict / evaluate / report / export through the command line, on a model trained once for the module.

The model is tiny and barely trained: what is checked is that every output is there with the right size
and ids, that evaluate reproduces the trainer's numbers exactly, and that ONNX agrees with PyTorch.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sideformer.cli import main
from sideformer.data.images import read_mask
from sideformer.data.metadata import load_metadata
from sideformer.data.synth import draw_scene
from sideformer.metrics import ConfusionMatrix
from tests.integration.conftest import REPO, TINY, env_for, sideformer

pytestmark = pytest.mark.slow

ONNX_TOLERANCE = 1e-4  # largest absolute logit difference accepted between onnxruntime and PyTorch


def call(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        sideformer(*args),
        env=env_for(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def ok(*args: str) -> str:
    proc = call(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def trained(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: b0 trained for 2 epochs on the 64x64 synthetic dataset (train/valid/test)."""
    run = tmp_path_factory.mktemp("predict") / "run"
    settings = [arg for s in [*TINY, "train.epochs=2"] for arg in ("--set", s)]
    ok("train", "--data", str(synth_dataset), "--output", str(run), *settings)
    return run


def read_png(path: Path) -> np.ndarray:
    """Decode a PNG and check it is a real picture: several colours, not one flat fill."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} does not decode"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 8 and image.std() > 10, f"{path} is blank"
    return image


def write_video(path: Path, frames: int, height: int, width: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height))
    assert writer.isOpened()
    for i in range(frames):
        image, _ = draw_scene(np.random.default_rng([11, i]), height, width)
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()


def test_predict_images_folders_and_video(trained: Path, synth_dataset: Path, tmp_path: Path) -> None:
    meta = load_metadata(synth_dataset)
    inputs = tmp_path / "in"
    (inputs / "street").mkdir(parents=True)
    for sample in meta.split("test"):
        shutil.copy(sample.image, inputs / "street" / sample.image.name)
    big, _ = draw_scene(np.random.default_rng(5), 90, 150)  # not the training size, not square
    cv2.imwrite(str(inputs / "big.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    (inputs / "broken.jpg").write_bytes(b"not an image")
    write_video(inputs / "walk.avi", frames=5, height=72, width=96)
    out = tmp_path / "out"

    stdout = ok(
        "predict", "--model", str(trained), "--input", str(inputs), "--output", str(out), "--batch-size", "4"
    )
    assert re.search(r"segmented 5 image\(s\) and 1 video\(s\), 5 frame\(s\) in [\d.]+s \([\d.]+/s\)", stdout)
    assert "broken.jpg" in stdout  # skipped with a warning, the rest goes on

    for sample in meta.split("test"):
        mask = cv2.imread(str(out / "masks/street" / f"{sample.image.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (64, 64) and mask.dtype == np.uint8 and mask.max() < meta.num_classes
        assert cv2.imread(str(out / "overlays/street" / f"{sample.image.stem}.jpg")).shape == (64, 64, 3)
    assert cv2.imread(str(out / "masks/big.png"), cv2.IMREAD_UNCHANGED).shape == (90, 150)
    assert cv2.imread(str(out / "overlays/big.jpg")).shape == (90, 150, 3)
    frames = sorted((out / "masks/walk").glob("*.png"))
    assert [f.name for f in frames] == [f"{i:06d}.png" for i in range(5)]
    assert all(cv2.imread(str(f), cv2.IMREAD_UNCHANGED).shape == (72, 96) for f in frames)
    video = cv2.VideoCapture(str(out / "overlays/walk.mp4"))
    shapes = []
    while True:
        read, frame = video.read()
        if not read:
            break
        shapes.append(frame.shape)
    assert shapes == [(72, 96, 3)] * 5
    assert not list(out.rglob(".*"))  # no temporary files left behind

    # The masks are the trainer's predictions: scored against the truth they give its test mIoU.
    confusion = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    for sample in meta.split("test"):
        predicted = cv2.imread(str(out / "masks/street" / f"{sample.image.stem}.png"), cv2.IMREAD_UNCHANGED)
        confusion.update(torch.from_numpy(predicted), torch.from_numpy(read_mask(sample.mask, meta.palette)))
    test_miou = json.loads((trained / "metrics.json").read_text())["test"]["miou"]
    assert confusion.compute().miou == pytest.approx(test_miou, abs=1e-12)

    # --size: another inference resolution, masks still at each image's own size (in-process: no startup).
    for size in ("32", "48x80"):
        target = tmp_path / size
        args = ["--input", str(inputs / "big.png"), "--output", str(target), "--size", size, "--no-overlays"]
        assert main(["predict", "--model", str(trained / "final_ckpts/model"), "--workers", "0", *args]) == 0
        assert cv2.imread(str(target / "masks/big.png"), cv2.IMREAD_UNCHANGED).shape == (90, 150)
        assert not (target / "overlays").exists()


def test_predict_never_reads_its_own_outputs(trained: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    image, _ = draw_scene(np.random.default_rng(2), 64, 96)
    cv2.imwrite(str(folder / "a.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for _ in range(2):  # the second run finds the first run's PNGs inside the input folder
        args = ["--input", str(folder), "--output", str(folder / "preds"), "--workers", "0"]
        assert main(["predict", "--model", str(trained), *args]) == 0
        assert "segmented 2 image(s)" in capsys.readouterr().out
    # a.jpg and a.png would both write masks/a.png: each keeps its suffix instead.
    assert sorted(p.name for p in (folder / "preds/masks").iterdir()) == ["a.jpg.png", "a.png.png"]


def test_predict_on_a_dataset_folder_reads_only_its_images(
    trained: Path, synth_dataset: Path, tmp_path: Path, capsys
) -> None:
    meta = load_metadata(synth_dataset)
    for folder, split_names in ((synth_dataset / "valid", ["valid"]), (synth_dataset, list(meta.splits))):
        out = tmp_path / folder.name
        assert main(["predict", "--model", str(trained), "--input", str(folder), "--output", str(out)]) == 0
        images = sum(len(meta.split(name)) for name in split_names)
        assert f"segmented {images} image(s)" in capsys.readouterr().out
        assert not any("masks" in p.relative_to(out / "masks").parts for p in (out / "masks").rglob("*.png"))


def test_evaluate_reproduces_the_trainers_validation(trained: Path, synth_dataset: Path) -> None:
    summary = json.loads((trained / "metrics.json").read_text())
    stdout = ok("evaluate", "--model", str(trained), "--data", str(synth_dataset), "--split", "valid")
    report = trained / "evaluation/valid"
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert evaluation["miou"] == pytest.approx(summary["best"]["val_miou"], abs=1e-12)
    assert evaluation["loss"] == pytest.approx(summary["best"]["val_loss"], rel=1e-9)
    for name, iou in summary["best"]["val_per_class_iou"].items():
        assert (
            (evaluation["per_class_iou"][name] is None)
            if math.isnan(iou)
            else (evaluation["per_class_iou"][name] == pytest.approx(iou, abs=1e-12))
        )
    labelled = sum(
        int((read_mask(s.mask, None) != 255).sum()) for s in load_metadata(synth_dataset).split("valid")
    )
    matrix = np.asarray(evaluation["confusion_matrix"])
    assert matrix.shape == (22, 22) and matrix.sum() == labelled
    assert "per-class IoU on the valid split (8 image(s))" in stdout and "sidewalk_blocks" in stdout
    assert f"{summary['best']['val_miou']:6.3f}" in stdout

    confusion = read_png(report / "confusion_matrix.png")
    assert confusion.shape[0] > 22 * 28 and confusion.shape[1] > 22 * 28  # one 28-pixel cell per class pair
    worst = read_png(report / "worst_predictions.png")
    # 6 rows of 180-pixel cells (64x64 images scaled up) under a header, 3 columns with 6-pixel gaps.
    assert worst.shape[1] == 3 * 180 + 4 * 6 and worst.shape[0] >= 30 + 6 * (22 + 186)
    assert [w["image"] for w in evaluation["worst"]] and len(evaluation["worst"]) == 6
    assert evaluation["worst"] == sorted(evaluation["worst"], key=lambda w: w["miou"])

    # The test split, into a folder of our choosing: the trainer's test numbers (in-process: no startup).
    out = trained / "eval-test"
    args = ["--data", str(synth_dataset), "--output", str(out), "--workers", "0"]  # no fork inside pytest
    assert main(["evaluate", "--model", str(trained), *args]) == 0
    test_miou = json.loads((out / "evaluation.json").read_text())["miou"]
    assert test_miou == pytest.approx(summary["test"]["miou"], abs=1e-12)


def test_report_draws_the_training_curves(trained: Path, tmp_path: Path) -> None:
    stdout = ok("report", "--run", str(trained))
    assert "2 epoch(s)" in stdout and str(trained / "training_curves.png") in stdout
    curves = read_png(trained / "training_curves.png")
    assert curves.shape == (420, 2 * 600 + 10, 3)  # two 600x420 panels side by side
    bgr = curves.reshape(-1, 3)
    for rgb in ((31, 119, 180), (255, 127, 14)):  # the first two series colours: lines were drawn
        assert (bgr == rgb[::-1]).all(axis=1).sum() > 50

    proc = call("report", "--run", str(tmp_path))
    assert proc.returncode == 2 and "no epochs logged" in proc.stderr and "Traceback" not in proc.stderr


def test_export_onnx_matches_pytorch(trained: Path, tmp_path: Path) -> None:
    import onnxruntime
    from transformers import SegformerForSemanticSegmentation

    from sideformer.model import normalize

    onnx_file = tmp_path / "model.onnx"
    stdout = ok("export", "--model", str(trained), "--onnx", str(onnx_file), "--atol", str(ONNX_TOLERANCE))
    reported = float(re.search(r"max abs difference ([\d.e+-]+)", stdout).group(1))
    assert reported <= ONNX_TOLERANCE

    # Independently of the command's own check: a new image size and batch, against the saved weights.
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["classes"])[1] == "sidewalk_blocks" and metadata["base_size"] == "64"
    images = np.stack([draw_scene(np.random.default_rng(i), 80, 112)[0] for i in range(3)])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    model = SegformerForSemanticSegmentation.from_pretrained(trained / "final_ckpts/model").eval()
    with torch.no_grad():
        expected = model(pixel_values=normalize(pixels)).logits.numpy()
    got = session.run(["logits"], {"image": pixels.numpy()})[0]
    assert got.shape == expected.shape == (3, 22, 20, 28)
    assert np.abs(got - expected).max() <= ONNX_TOLERANCE


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("predict --model DATA --input DATA --output TMP", "--model DATA: not a trained model"),
        (
            "predict --model RUN --input TMP/missing.jpg --output TMP",
            "TMP/missing.jpg: no such file or folder",
        ),
        ("evaluate --model RUN --data DATA --split nope", "split 'nope' is empty"),
        ("export --model DATA --onnx TMP/m.onnx", "--model DATA: not a trained model"),
        (
            "export --model RUN --onnx TMP",
            "--onnx TMP is a folder; give the file to write, e.g. --onnx TMP/model.onnx",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(
    command: str, message: str, trained: Path, synth_dataset: Path, tmp_path: Path, capsys
) -> None:
    paths = {"DATA": str(synth_dataset), "RUN": str(trained), "TMP": str(tmp_path)}
    args = [re.sub("DATA|RUN|TMP", lambda m: paths[m.group()], a) for a in command.split()]
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert re.sub("DATA|RUN|TMP", lambda m: paths[m.group()], message) in stderr, stderr
    assert stderr.startswith("sideformer: error: ") and stderr.count("\n") == 1


def test_evaluate_names_a_missing_image(trained: Path, synth_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    missing = load_metadata(data).split("test")[2].image
    missing.unlink()
    # Read in loader worker processes: the error still comes out as one line naming the file.
    proc = call("evaluate", "--model", str(trained), "--data", str(data), "--workers", "2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = f"sideformer: error: {missing}: cannot read image (missing, empty or not an image file).\n"
    assert proc.stderr.endswith(error) and "Traceback" not in proc.stderr  # (OpenCV warns on stderr first)
