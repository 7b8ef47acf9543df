"""SegFormer from a hub id / local directory, or a b0–b5 architecture with random weights."""

from __future__ import annotations

from typing import Any

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation
from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

from sideformer.config import ModelConfig
from sideformer.errors import UserError, first_line

# MiT encoder sizes from the SegFormer paper (Table 6); heads, strides and sr ratios are shared.
VARIANT_ARCH: dict[str, dict[str, Any]] = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    "b3": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 18, 3], "decoder_hidden_size": 768},
    "b4": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 8, 27, 3], "decoder_hidden_size": 768},
    "b5": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "decoder_hidden_size": 768},
}

# SegformerImageProcessor's defaults: ImageNet statistics, applied on the device to uint8 batches.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def build_model(
    config: ModelConfig, id2label: dict[int, str], ignore_index: int = 255
) -> SegformerForSemanticSegmentation:
    model = _build_model(config, id2label, ignore_index)
    return fold_decode_head(model) if config.fold_decode_head else model


def _build_model(
    config: ModelConfig, id2label: dict[int, str], ignore_index: int
) -> SegformerForSemanticSegmentation:
    # num_labels follows from id2label; passing both trips a consistency warning in transformers.
    labels = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if config.pretrained:
        try:
            # The MiT hub checkpoints hold the encoder only; the decode head starts fresh for our classes.
            return SegformerForSemanticSegmentation.from_pretrained(
                config.pretrained,
                ignore_mismatched_sizes=True,
                semantic_loss_ignore_index=ignore_index,
                **labels,
            )
        except (OSError, ValueError) as exc:
            raise UserError(
                f"model.pretrained={config.pretrained!r}: cannot load weights ({first_line(exc)}). "
                f"Give a local directory (e.g. a mounted HF cache), check HF_HUB_OFFLINE/network access, "
                f"or set model.pretrained=null and model.variant=b0..b5 for random weights."
            ) from None
    arch = SegformerConfig(**VARIANT_ARCH[config.variant], semantic_loss_ignore_index=ignore_index, **labels)
    return SegformerForSemanticSegmentation(arch)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW on the device -> float, ImageNet-normalised."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for `precision` bf16, or auto on a GPU that has it; None means fp32."""
    if precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SegFormer predicts at 1/4 resolution; loss and metrics are computed at label size."""
    # NCHW: cross-entropy over a channels_last map (what the folded head returns) copies it to NCHW first,
    # so converting the small 1/4-size logits is cheaper than converting the full-size ones.
    logits = logits.contiguous()
    return torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def training_loss(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    ignore_index: int,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, float32 logits at the masks' size) for uint8 `images` N x 3 x H x W and class-id
    `masks` N x H x W, both on the model's device: the one forward + loss of training, validation
    (`reduction="sum"`, to average over all pixels of all ranks) and the benchmarks."""
    pixels = normalize(images)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    # Autocast covers the forward only: the upsampling and the loss run in float32.
    with torch.autocast(
        pixels.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        logits = model(pixel_values=pixels).logits
    logits = upsample_logits(logits.float(), masks.shape[-2:])
    loss = torch.nn.functional.cross_entropy(logits, masks, ignore_index=ignore_index, reduction=reduction)
    return loss, logits


class FoldedDecodeHead(SegformerDecodeHead):
    """SegFormer's all-MLP decode head, evaluated in a cheaper order that computes the same function.

    The original projects each encoder stage to `decoder_hidden_size` (D) channels, upsamples all four to
    1/4 resolution, concatenates them (4D channels) and mixes them with a 1x1 convolution (`linear_fuse`,
    no bias). Bilinear upsampling acts on each channel alike and keeps constants, so it commutes with any
    per-pixel affine map: folding fuse slice k and stage k's projection into one D x C_k matrix, applying it
    at the stage's own resolution, upsampling the D-channel result and summing gives the same tensor
    without the 4D-channel concatenation or the D x 4D convolution at 1/4 resolution (about half of b0's
    forward work at 256x256). Same parameters and state_dict keys, same gradients up to float rounding;
    `save_pretrained` writes an ordinary SegFormer.
    """

    def forward(self, encoder_hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        states = list(encoder_hidden_states)
        if any(state.ndim != 4 for state in states):  # reshape_last_stage=False: the original code path
            return super().forward(encoder_hidden_states, **kwargs)
        hidden = self.config.decoder_hidden_size
        fuse = self.linear_fuse.weight.flatten(1)  # D x (stages * D); the stages are concatenated reversed
        size = states[0].shape[2:]
        summed: torch.Tensor | None = None
        # Coarsest stage first: the running sum then starts as a fresh upsampled tensor, so adding in place
        # is cheap. Adding in place onto the 1/4 stage's permuted view would route every gradient through
        # as_strided copies in NCHW and lose the channels_last layout in the backward pass.
        for index in reversed(range(len(states))):
            state, projection = states[index], self.linear_projections[index]
            block = len(states) - 1 - index
            mix = fuse[:, block * hidden : (block + 1) * hidden]
            weight = mix @ projection.proj.weight  # D x C_k
            bias = mix @ projection.proj.bias
            # (B, H, W, C_k) @ W^T viewed back as (B, D, H, W) is channels_last at no copy; CPU bilinear
            # upsampling runs several times faster on channels_last than on NCHW (59 vs 220 ms forward and
            # backward for b0's 1/8 map at batch 8), and transformers' head upsamples the same layout.
            out = torch.nn.functional.linear(state.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
            if out.shape[2:] != size:  # same size: bilinear interpolation would be an exact copy
                out = torch.nn.functional.interpolate(out, size=size, mode="bilinear", align_corners=False)
            summed = out if summed is None else summed.add_(out)
        assert summed is not None
        hidden_states = self.dropout(self.activation(self.batch_norm(summed)))
        return self.classifier(hidden_states)


def fold_decode_head(model: SegformerForSemanticSegmentation) -> SegformerForSemanticSegmentation:
    """Switch `model`'s decode head to FoldedDecodeHead in place (weights untouched); returns `model`."""
    head = getattr(model, "decode_head", None)
    if type(head) is SegformerDecodeHead:
        head.__class__ = FoldedDecodeHead
    return model
