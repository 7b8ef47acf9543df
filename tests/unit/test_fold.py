"""FoldedDecodeHead computes what transformers' SegformerDecodeHead computes, with the same parameters."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import SegformerForSemanticSegmentation
from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

from sideformer.config import ModelConfig
from sideformer.metrics import ConfusionMatrix, counts_without_sync
from sideformer.model import FoldedDecodeHead, build_model, fold_decode_head, upsample_logits

LABELS = {i: f"c{i}" for i in range(5)}


def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    plain = build_model(ModelConfig(variant="b0", fold_decode_head=False), LABELS)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is a real check
        plain.decode_head.batch_norm.running_mean.uniform_(-0.5, 0.5)
        plain.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
    folded = fold_decode_head(copy.deepcopy(plain))
    assert type(plain.decode_head) is SegformerDecodeHead and type(folded.decode_head) is FoldedDecodeHead
    return plain, folded


def test_folded_head_gives_the_same_logits_and_state_dict() -> None:
    plain, folded = pair()
    assert list(plain.state_dict()) == list(folded.state_dict())
    pixels = torch.randn(2, 3, 96, 128)  # not square, stages at 1/4 ... 1/32
    with torch.no_grad():
        expected = plain.eval()(pixel_values=pixels).logits
        got = folded.eval()(pixel_values=pixels).logits
    assert got.shape == expected.shape == (2, 5, 24, 32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_folded_head_gives_the_same_loss_and_gradients_in_training() -> None:
    plain, folded = pair()
    pixels, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    losses = []
    for model in (plain, folded):
        model.train()  # BatchNorm on batch statistics; dropout off: its masks follow memory layout, and
        for module in model.modules():  # the two heads' intermediates are laid out differently
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if hasattr(module, "drop_prob"):
                module.drop_prob = 0.0
        logits = model(pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(upsample_logits(logits, (64, 64)), labels)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    grads = dict(folded.named_parameters())
    scale = max(p.grad.abs().max() for p in plain.parameters())
    for name, param in plain.named_parameters():
        # Absolute tolerance on the overall gradient scale: the projections' biases feed BatchNorm in
        # training mode, so their true gradient is 0 and both sides hold rounding noise of ~1e-9.
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-3, atol=1e-4 * float(scale))


def test_a_folded_model_saves_and_loads_as_plain_segformer(tmp_path: Path) -> None:
    _, folded = pair()
    folded.save_pretrained(tmp_path / "model")
    loaded = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "model")
    assert type(loaded.decode_head) is SegformerDecodeHead
    for key, value in folded.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert fold_decode_head(fold_decode_head(loaded)).decode_head.__class__ is FoldedDecodeHead  # idempotent


def autograd_nodes(root: torch.Tensor) -> set[str]:
    seen, names, stack = set(), set(), [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_folded_head_keeps_channels_last_through_the_backward_pass() -> None:
    # Layout, not timing: on CPU an NCHW bilinear upsample of the 256-channel maps costs several times the
    # channels_last one, and an in-place add onto a permuted view turns every gradient into as_strided copies.
    _, folded = pair()
    logits = folded.train()(pixel_values=torch.randn(2, 3, 64, 64)).logits
    assert logits.is_contiguous(memory_format=torch.channels_last)
    nodes = autograd_nodes(logits)
    assert "UpsampleBilinear2DBackward0" in nodes
    assert not nodes & {"CopySlices", "AsStridedBackward0"}, nodes
    assert upsample_logits(logits, (64, 64)).is_contiguous()  # the loss's cross-entropy wants NCHW


def test_default_config_folds_and_the_option_turns_it_off() -> None:
    assert type(build_model(ModelConfig(variant="b0"), LABELS).decode_head) is FoldedDecodeHead
    off = build_model(ModelConfig(variant="b0", fold_decode_head=False), LABELS)
    assert type(off.decode_head) is SegformerDecodeHead


def test_sync_free_confusion_counts_equal_the_bincount() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (3, 17, 19), generator=generator)
    labels[labels == 5] = 255
    predictions = torch.randint(0, 5, (3, 17, 19), generator=generator)
    cm = ConfusionMatrix(num_classes=5, ignore_index=255)
    cm.update(predictions, labels)
    assert torch.equal(counts_without_sync(predictions, labels, 5, 255), cm.matrix)
    assert int(cm.matrix.sum()) == int((labels != 255).sum())
