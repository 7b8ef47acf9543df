"""Whether the training forward is compiled, and how: train.compile and train.compile_mode, with their
`auto` resolved for the device and the run's shape.

Measured (BENCHMARKS.md, one H200, b0 at 512x512, batch 8): CUDA graphs (torch.compile's reduce-overhead)
made the step 2.46x the HF-docs loop's and end to end 1.33x, where the eager bf16 step was 0.92x; the
default mode was about as fast as eager. On CPU compiling did not pay off. So `auto` compiles with CUDA
graphs where that was measured: one CUDA process, one micro-batch per optimizer step. It stays eager:
- on CPU (the CPU default never changes);
- under DDP: the bucketed all-reduce splits the graph (DDPOptimizer) and CUDA graphs around NCCL were
  never measured here;
- with train.grad_accum > 1: the no_sync micro-batches and the syncing one are different graphs, also
  never measured.
Validation always runs the bare module (other image sizes each epoch would re-record graphs), and a
training batch of another shape (an epoch's smaller last batch) records one more graph, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sideformer.config import TrainConfig


@dataclass(frozen=True)
class CompileChoice:
    enabled: bool
    mode: str
    """torch.compile's mode (meaningful when enabled)."""

    @property
    def cuda_graphs(self) -> bool:
        return self.enabled and self.mode == "reduce-overhead"

    def describe(self) -> str:
        return f"torch.compile ({self.mode})" if self.enabled else "eager"


def choose_compile(train: TrainConfig, device_type: str, world_size: int) -> CompileChoice:
    """train.compile / train.compile_mode for this run; `auto` as the module docstring explains."""
    cuda = device_type == "cuda"
    mode = train.compile_mode if train.compile_mode != "auto" else "reduce-overhead" if cuda else "default"
    if train.compile == "auto":
        enabled = cuda and world_size == 1 and train.grad_accum == 1
    else:
        enabled = bool(train.compile)
    return CompileChoice(enabled, mode)
