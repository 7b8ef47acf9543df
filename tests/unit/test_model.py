"""Model loading: random-init variants, a local pretrained directory, and a clear error when weights
cannot be had (no downloads here: a hub id fails the same way an air-gapped cluster would)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sideformer.config import ModelConfig
from sideformer.errors import UserError
from sideformer.model import VARIANT_ARCH, build_model, normalize, upsample_logits

LABELS = {0: "background", 1: "sidewalk_blocks", 2: "roadway_normal"}


def test_b0_random_init_has_the_paper_size_and_our_labels() -> None:
    model = build_model(ModelConfig(variant="b0"), LABELS)
    n_params = sum(p.numel() for p in model.parameters())
    assert 3.6e6 < n_params < 3.9e6  # SegFormer-b0: 3.7 M
    assert model.config.id2label == LABELS and model.config.num_labels == 3
    logits = model(pixel_values=torch.zeros(1, 3, 64, 96)).logits
    assert logits.shape == (1, 3, 16, 24)  # 1/4 resolution
    assert upsample_logits(logits, (64, 96)).shape == (1, 3, 64, 96)


def test_every_variant_is_defined() -> None:
    assert sorted(VARIANT_ARCH) == ["b0", "b1", "b2", "b3", "b4", "b5"]


def test_local_pretrained_directory_loads_with_a_new_head(tmp_path: Path) -> None:
    source = build_model(ModelConfig(variant="b0"), {i: f"c{i}" for i in range(5)})
    source.save_pretrained(tmp_path / "weights")
    model = build_model(ModelConfig(pretrained=str(tmp_path / "weights")), LABELS)
    assert model.config.num_labels == 3 and model.config.id2label == LABELS
    encoder_key = "segformer.stages.0.patch_embeddings.proj.weight"
    assert torch.equal(model.state_dict()[encoder_key], source.state_dict()[encoder_key])


def test_a_missing_local_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"model.pretrained='.*missing-dir': cannot load weights.*model.variant"
    ):
        build_model(ModelConfig(pretrained=str(tmp_path / "missing-dir")), LABELS)


def test_normalize_matches_the_image_processor_statistics() -> None:
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(images)
    assert out[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)
