"""data.decode=device: the torch-op augmentation, run here on CPU tensors, draws what the OpenCV path
draws, keeps masks exact and gives the same distribution of images. Only nvJPEG itself needs a GPU."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sideformer.config import load_config
from sideformer.data import device_augment
from sideformer.data.dataset import EncodedDataset, SegmentationDataset
from sideformer.data.device_augment import EncodedBatch, collate_encoded, gpu_decoder_problem
from sideformer.data.images import encode_mask
from sideformer.data.metadata import Sample
from sideformer.data.synth import draw_scene
from sideformer.data.transforms import Crop, Jitter, TrainTransform, apply_jitter, cut_scaled
from sideformer.distributed import single_process
from sideformer.train_data import decode_on_device
from tests.unit.test_transforms import IGNORE, assert_aligned, coded_pair

CROP = (128, 128)


def scene_samples(folder: Path, count: int, size: tuple[int, int] = (360, 640)) -> list[Sample]:
    samples = []
    for i in range(count):
        image, mask = draw_scene(np.random.default_rng(i), *size)
        sample = Sample(folder / f"{i}.jpg", folder / f"{i}.png")
        cv2.imwrite(str(sample.image), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        sample.mask.write_bytes(encode_mask(mask))
        samples.append(sample)
    return samples


def both_paths(samples: list[Sample], transform: TrainTransform, seeds: range) -> tuple[list, list]:
    """(OpenCV path's (image, mask) per draw, device path's), images as uint8 HxWx3 arrays."""
    loader_data = SegmentationDataset(samples, None, transform)
    device_data = EncodedDataset(samples, None, transform)
    collate = collate_encoded(transform.crop_size)
    reference, device = [], []
    for seed in seeds:
        index = seed % len(samples)
        image, mask = loader_data[index, seed]
        reference.append((image.permute(1, 2, 0).numpy(), mask.numpy()))
        batch, masks = collate([device_data[index, seed]])
        images = batch.to("cpu")
        device.append((images[0].permute(1, 2, 0).numpy(), masks[0].numpy()))
    return reference, device


def test_both_paths_draw_the_same_crops_and_give_the_same_masks(tmp_path: Path) -> None:
    transform = TrainTransform(CROP, 128, (0.5, 2.0), True, 0.2, IGNORE)
    reference, device = both_paths(scene_samples(tmp_path, 3), transform, range(40))
    differences = []
    for (ref_image, ref_mask), (image, mask) in zip(reference, device, strict=True):
        np.testing.assert_array_equal(mask, ref_mask)  # exact: the same cut, padding and flip
        assert image.shape == ref_image.shape == (*CROP, 3) and image.dtype == np.uint8
        differences.append(np.abs(image.astype(np.int16) - ref_image).mean())
    # Same window, flip and jitter: only the shrinking filter and the decoder's rounding differ.
    assert np.median(differences) < 2.5 and max(differences) < 6.0, differences
    assert any((mask == IGNORE).any() for _, mask in device)  # small scales were padded


def test_both_paths_give_the_same_distribution_of_images(tmp_path: Path) -> None:
    transform = TrainTransform(CROP, 128, (0.5, 2.0), True, 0.3, IGNORE)
    reference, device = both_paths(scene_samples(tmp_path, 4), transform, range(64))

    def statistics(pairs: list) -> np.ndarray:
        images = np.stack([image for image, _ in pairs]).astype(np.float64)
        per_image = images.reshape(len(pairs), -1, 3)
        # Per channel: mean, spread, and mean absolute horizontal gradient (how sharp the resampling is).
        gradient = np.abs(np.diff(images, axis=2)).mean(axis=(0, 1, 2))
        return np.concatenate([per_image.mean(axis=(0, 1)), per_image.std(axis=(0, 1)), gradient])

    ref, dev = statistics(reference), statistics(device)
    # Other seeds' draws move these by 3-9 %: the same draws keep them within 1 %.
    np.testing.assert_allclose(dev[:6], ref[:6], rtol=0.01)
    # Antialiased bilinear is a little softer than OpenCV's area average (about 7 % on these scenes).
    np.testing.assert_allclose(dev[6:], ref[6:], rtol=0.12)


def test_the_window_lands_on_the_mask_s_pixels_when_enlarging_and_shrinking() -> None:
    image, mask = coded_pair(240, 400, side=16)
    transform = TrainTransform(CROP, 160, (0.4, 2.0), True, 0.0, IGNORE)
    for seed in range(12):
        crop = transform.draw(*mask.shape, np.random.default_rng(seed))
        window = device_augment._window(torch.from_numpy(image).permute(2, 0, 1), crop, CROP)
        window = window.permute(1, 2, 0).numpy().astype(np.uint8)
        cut_mask = cut_scaled(mask, crop, CROP, nearest=True)
        assert window.shape[:2] == cut_mask.shape
        assert_aligned(window, cut_mask)
        reference = cut_scaled(image, crop, CROP, nearest=False)
        if crop.frame[0] > mask.shape[0]:  # enlarging: OpenCV's bilinear, to its fixed-point rounding
            assert np.abs(window.astype(np.int16) - reference).max() <= 1


def test_the_jitter_is_opencv_s_lookup_table_and_blend() -> None:
    image, _ = draw_scene(np.random.default_rng(3), 96, 128)
    draws = [Jitter(1.2, 20.0, 0.7), Jitter(0.8, -30.0, 1.3), Jitter(1.1, 5.0, 1.0)]
    batch = torch.from_numpy(np.stack([image] * 3)).permute(0, 3, 1, 2).float()
    out = device_augment.jitter(batch, draws).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for k, draw in enumerate(draws):
        assert np.abs(out[k].astype(np.int16) - apply_jitter(image, draw)).max() <= 1


def test_an_exif_rotated_jpeg_is_decoded_in_the_worker_upright(tmp_path: Path) -> None:
    image, mask = draw_scene(np.random.default_rng(1), 64, 96)
    stored = np.ascontiguousarray(np.rot90(image, 1))  # stored sideways, EXIF orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    transform = TrainTransform((64, 64), 64, (1.0, 1.0), False, 0.0, IGNORE)
    encoded, _ = device_augment.encode_sample(path, mask, transform, np.random.default_rng(0))
    assert not encoded.encoded and tuple(encoded.data.shape) == (64, 96, 3)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(image).save(plain, quality=95)
    encoded, _ = device_augment.encode_sample(plain, mask, transform, np.random.default_rng(0))
    assert encoded.encoded and encoded.data.ndim == 1  # bytes, for the device's decoder


def test_png_images_are_decoded_in_the_worker_and_augmented_on_the_device(tmp_path: Path) -> None:
    image, mask = coded_pair(96, 160)
    sample = Sample(tmp_path / "a.png", tmp_path / "m.png")
    cv2.imwrite(str(sample.image), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    sample.mask.write_bytes(encode_mask(mask))
    transform = TrainTransform((64, 64), 64, (0.5, 2.0), True, 0.0, IGNORE)
    item, out_mask = EncodedDataset([sample], None, transform)[0, 5]
    assert not item.encoded
    out = EncodedBatch([item], (64, 64)).to("cpu")[0].permute(1, 2, 0).numpy()
    assert_aligned(out, out_mask.numpy())


def test_auto_decodes_in_the_loader_on_cpu_and_device_is_honoured() -> None:
    env = single_process("cpu")
    assert gpu_decoder_problem(torch.device("cpu")) == "the device is cpu, not a GPU"
    assert decode_on_device(load_config(), env) is False  # the CPU default is unchanged
    assert decode_on_device(load_config(overrides=["data.decode=device"]), env) is True
    assert decode_on_device(load_config(overrides=["data.decode=loader"]), env) is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a GPU")
def test_nvjpeg_decodes_as_opencv_does(tmp_path: Path) -> None:
    (sample,) = scene_samples(tmp_path, 1)
    assert gpu_decoder_problem(torch.device("cuda")) is None
    data = torch.from_numpy(np.fromfile(sample.image, dtype=np.uint8))
    crop = Crop((360, 640), 0, 0, False)
    item = device_augment.EncodedImage(data, True, crop, None, str(sample.image))
    (on_gpu,) = device_augment.decode([item], torch.device("cuda"))
    (on_cpu,) = device_augment.decode([item], torch.device("cpu"))
    assert on_gpu.is_cuda and (on_gpu.cpu().int() - on_cpu.int()).abs().float().mean() < 2.0
