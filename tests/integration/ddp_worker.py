"""Run by torchrun in tests: train, then dump this rank's parameters so ranks can be compared."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

from sideformer import distributed
from sideformer.config import load_config
from sideformer.train import train

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO if os.environ["RANK"] == "0" else logging.WARNING,
        format="%(message)s",
        stream=sys.stdout,
    )
    data, output, dump_dir, *overrides = sys.argv[1:]
    config = load_config(overrides=overrides)
    config.data.path, config.output = data, output
    with distributed.process_group(config.train.device) as env:
        result = train(config, env=env)
    assert result.model is not None
    params = {name: p.detach().cpu() for name, p in result.model.named_parameters()}
    torch.save(params, Path(dump_dir) / f"params_rank{os.environ['RANK']}.pt")
