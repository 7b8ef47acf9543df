"""The layout of a run folder (`--output`), named once. Rank 0 of `train` writes it; `predict`,
`evaluate`, `report`, the demo and the search read it.

    config.yaml                  the resolved configuration
    train_log.jsonl              one JSON object per epoch
    temp_ckpts/last.pth          everything needed to resume (removed at the end unless kept)
    temp_ckpts/best.pth          the best weights so far
    final_ckpts/best_model.pth   plain state_dict of the best epoch
    final_ckpts/model/           the trained-model folder (`trained_model`): save_pretrained + sideformer.json
    metrics.json                 best epoch, its metrics and per-class IoU, the history
    training_curves.png          `sideformer report`
    evaluation/<split>/          `sideformer evaluate`
    best_hyperparams.json        `sideformer search` / `tune`: the best trial's parameters
    study.db                     the default study storage (SQLite)
    trials/trial_NNNN/           `sideformer search`: one run folder per trial
"""

from __future__ import annotations

from pathlib import Path

FINAL_DIR, MODEL_DIR = "final_ckpts", "model"


class RunDir:
    """The paths of one run folder; nothing is created until something writes there."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def of_model(cls, model_dir: Path) -> RunDir | None:
        """The run a trained-model folder belongs to (RUN/final_ckpts/model), or None for a loose one."""
        if model_dir.parent.name == FINAL_DIR:
            return cls(model_dir.parent.parent)
        return None

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def temp(self) -> Path:
        return self.root / "temp_ckpts"

    @property
    def last(self) -> Path:
        return self.temp / "last.pth"

    @property
    def best(self) -> Path:
        return self.temp / "best.pth"

    @property
    def final(self) -> Path:
        return self.root / FINAL_DIR

    @property
    def best_state_dict(self) -> Path:
        return self.final / "best_model.pth"

    @property
    def model(self) -> Path:
        return self.final / MODEL_DIR

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def curves(self) -> Path:
        return self.root / "training_curves.png"

    def evaluation(self, split: str) -> Path:
        return self.root / "evaluation" / split

    @property
    def hyperparams(self) -> Path:
        return self.root / "best_hyperparams.json"

    @property
    def study_db(self) -> Path:
        """The default study storage (SQLite) when no --storage or OPTUNA_STORAGE is given."""
        return self.root / "study.db"

    def trial(self, number: int) -> Path:
        return self.root / "trials" / f"trial_{number:04d}"

    @property
    def is_trial(self) -> bool:
        """A search trial's folder (`trial()` of a study's output)."""
        return self.root.parent.name == "trials" and self.root.name.startswith("trial_")

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def finished(self) -> bool:
        return self.metrics.exists() and self.final.exists()
