"""Server strategies, one per file."""

from server.strategies.per_task_fedavg import PerTaskFedAvg

__all__ = ["PerTaskFedAvg"]
