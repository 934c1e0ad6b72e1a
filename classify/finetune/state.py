"""What survives a crash: atomic checkpoints, the training state a rerun resumes from, and the run's result."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from classify.finetune.network import cpu_state
from store.atomic import atomic_write
from store.validation import UserError

log = logging.getLogger(__name__)

STATE_FORMAT = "fewshot-finetune-state/1"


# ------------------------------------------------------------------------------------------------------------ result
@dataclass
class FinetuneResult:
    """What a ``finetune`` run produced (JSON-able through :meth:`to_dict`)."""

    spec: str  # the new backbone spec, e.g. timm:<name>@<out>
    checkpoint: str
    head_model: str
    image_size: int | None
    epochs_run: int
    best_epoch: int
    alpha: float
    alpha_chosen_by: str  # validation, fixed, no validation, init saw the validation rows, no fine-tuned epoch
    val_accuracy_initial: float | None
    val_accuracy: float | None  # of the exported network
    resumed_from: int
    seconds: float
    history: list = field(default_factory=list)
    pseudo: dict | None = None
    weights_change: float | None = None  # relative L2 change of the exported weights from the initial network

    def to_dict(self) -> dict:
        return asdict(self)


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file beside ``path``, fsync, rename: a kill at any moment leaves the old or the new file,
    and a failed write (disk full) removes its temporary file."""
    with atomic_write(path, fsync=True) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(obj, str(tmp))
        else:
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)


def load_state(path: Path) -> dict:
    """The training state beside a checkpoint, loaded with ``weights_only`` (tensors and plain values only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusals and damaged files raise many types; one line for the user
        reason = "it holds Python objects, which could run code" if "weights_only" in str(err) else \
            f"{type(err).__name__}"
        raise UserError(f"{path} is not a fine-tuning state written by this suite ({reason}); delete it to start "
                         "over") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a fine-tuning state written by this suite; delete it to start over")
    return state


def check_config(saved: dict, cfg: dict, state_path: Path) -> None:
    diff = sorted(k for k in set(saved) | set(cfg) if saved.get(k) != cfg.get(k))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {cfg.get(k)!r}" for k in diff[:6])
        raise UserError(f"{state_path} holds a run with other settings ({details}); rerun with the same settings to "
                         f"resume, or delete {state_path} to start over")


def preprocessing_matches(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(json.loads(json.dumps(b, default=str)),
                                                                    sort_keys=True, default=str)


def previous_state(path: Path, cfg: dict, out: Path) -> dict | None:
    """The saved state of this run (same settings), or None to start fresh."""
    if not path.is_file():
        return None
    state = load_state(path)
    if state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a fine-tuning state; delete it to start over")
    check_config(state["config"], cfg, path)
    if state.get("finished") and not out.is_file():
        raise UserError(f"{path} says this run finished but {out} is missing; delete {path} to fine-tune again")
    return state


@dataclass
class Progress:
    """Where a run stands: initial and best weights, the best epoch and its validation score, epochs done."""

    initial: dict
    best: dict | None
    best_epoch: int
    best_score: dict | None
    score0: dict | None  # the initial network's validation score
    epoch: int = 0
    num_updates: int = 0
    history: list = field(default_factory=list)

    @classmethod
    def start(cls, net, score0: dict | None, contaminated: bool) -> "Progress":
        """A fresh run; the initial network is the first candidate unless the init model saw the validation rows."""
        initial = cpu_state(net)
        best = best_score = None
        if score0 is not None:
            log.info("initial network: validation accuracy %.4f, loss %.4f", score0["accuracy"], score0["loss"])
            if not contaminated:  # the initial head never saw the validation rows: epoch 0 is a candidate
                best, best_score = initial, score0
            else:
                log.warning("the --init model was fitted on every labeled row, the validation rows included, so "
                            "the initial network's validation score is optimistic: early stopping chooses among "
                            "fine-tuned epochs only, and WiSE alpha is not chosen by validation (it would pick 0)")
        return cls(initial, best, 0, best_score, score0)

    @classmethod
    def resume(cls, state: dict, net, optimizer, scheduler, thresholds) -> "Progress":
        """Restore the network, optimizer, schedule and thresholds of a saved state; the progress it recorded."""
        net.load_state_dict(state["current"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        thresholds.load_state_dict(state["thresholds"])
        return cls(state["initial"], state["best"], int(state["best_epoch"]), state["best_score"],
                   state["score_initial"], int(state["epoch"]), int(state["num_updates"]), list(state["history"]))

    def save(self, path: Path, cfg: dict, net, optimizer, scheduler, thresholds, extra: dict) -> None:
        """Write everything a rerun needs to continue after ``self.epoch`` (atomically)."""
        atomic_save({"format": STATE_FORMAT, "finished": False, "config": cfg, "epoch": self.epoch,
                     "current": cpu_state(net), "initial": self.initial, "best": self.best,
                     "best_epoch": self.best_epoch, "best_score": self.best_score, "score_initial": self.score0,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "thresholds": thresholds.state_dict(), "num_updates": self.num_updates,
                     "history": self.history, **extra}, path)
