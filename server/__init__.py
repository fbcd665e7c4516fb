"""unicon ServerApp: per-task federated aggregation of skills."""
