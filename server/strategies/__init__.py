"""Server strategies, one per file."""

from server.strategies.per_task_fedavg import PerTaskFedAvg
from server.strategies.per_task_median import PerTaskMedian
from server.strategies.per_task_trimmed_mean import PerTaskTrimmedMean

__all__ = ["PerTaskFedAvg", "PerTaskMedian", "PerTaskTrimmedMean"]
