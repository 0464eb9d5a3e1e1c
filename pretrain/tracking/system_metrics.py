"""System metrics of the machine that tracks a run (rank 0's): CPU, memory, disk, network, GPU.

MLflow's SystemMetricsMonitor logs its samples itself, with synchronous
requests, asks the server for the run's status after every sample, and stops
for good at the first failed request. Here its monitors are only sampled, in a
thread of ours, and the samples are handed to the tracker like any metric:
sent in the background with the next flush, spooled while the server is down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

PREFIX = "system/"
# MLflow's own default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (seconds) overrides it.
SAMPLING_INTERVAL_S = 10


class SystemMetricsSampler:
    """One sample every interval, logged as `system/<name>` at steps `first_step`, `first_step + 1`, ..."""

    def __init__(self, log_metrics: Callable[[dict[str, float], int], None], first_step: int, tracking_uri: str):
        self.log_metrics, self.step = log_metrics, first_step
        # The run id and URI are MLflow's logging, which is not used: only the monitors are.
        self.monitor = SystemMetricsMonitor(None, sampling_interval=SAMPLING_INTERVAL_S, tracking_uri=tracking_uri)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._sample()  # the first CPU reading measures nothing; it starts the first interval
        while not self._stop.wait(self.monitor.sampling_interval):
            self.log_metrics({PREFIX + key: value for key, value in self._sample().items()}, self.step)
            self.step += 1

    def _sample(self) -> dict[str, float]:
        self.monitor.collect_metrics()
        metrics = self.monitor.aggregate_metrics()
        for monitor in self.monitor.monitors:
            monitor.clear_metrics()
        return metrics

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
