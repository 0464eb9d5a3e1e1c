"""Tracking: every run's record (parameters, metrics, artifacts, status) in a store of runs, and models in its registry.

Owns the `Tracker` and `TrackingBackend` interfaces and their one registry
(base.py), and MLflow behind them: the tracker (mlflow_tracker.py), its
spool for when the server is down (spool.py), system metrics
(system_metrics.py), the model registry (mlflow_registry.py). What a run
records about itself (tags, flattened parameters) is run_info.py.

Imports pretrain/config/, pretrain/layout.py, pretrain/errors.py and, for
the registry's folder check, pretrain/weights/; MLflow is imported here and
nowhere else in pretrain/.
"""

from pretrain.tracking.base import BACKENDS, RegisteredVersion, SyncReport, Tracker, TrackingBackend, backend

__all__ = ["BACKENDS", "RegisteredVersion", "SyncReport", "Tracker", "TrackingBackend", "backend"]
