"""Local training and evaluation of one task's skill."""

from unicon_core.training.loop import (
    TrainResult,
    build_optimizer,
    evaluate_task,
    make_loader,
    train_task,
)

__all__ = ["TrainResult", "build_optimizer", "evaluate_task", "make_loader", "train_task"]
