"""The data build's Ray: its own on loopback, or a cluster's; started and stopped around the work in Ray."""

from __future__ import annotations

import logging
import os
import sys

import ray
from ray._private import ray_constants

import data_pipeline
from data_pipeline.errors import DataError

RAY_CLUSTER_MODE = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR  # "0": Ray's single-machine mode, on loopback


def start_ray(ray_address: str | None, verbose: bool = False) -> None:
    address = ray_address or os.environ.get("RAY_ADDRESS")
    # On a cluster the workers import this package from the driver's copy, installed or not.
    runtime_env = {"py_modules": [os.path.dirname(data_pipeline.__file__)]} if address else None
    if not address:
        _loopback_only(True)
    # Without an address, a Ray of our own: ray.init() would otherwise join whatever cluster
    # /tmp/ray/ray_current_cluster names, and wait forever on one that died without cleaning up.
    if not verbose:
        # Ray's own lines (its start, its executor's plans, its authentication notice) are for debugging Ray.
        logging.getLogger("ray").setLevel(logging.ERROR)
        # Ray Data sets its loggers up again as a dataset runs, at this level.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    try:
        ray.init(
            address=address or "local",
            runtime_env=runtime_env,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.INFO if verbose else logging.ERROR,
        )
    except BaseException:
        stop_ray()  # and out of single-machine mode: a later connection to a cluster from this process must work
        raise
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    # A DataError raised by a worker (a source that cannot be opened) reaches the caller as itself.
    context.raise_original_map_exception = True
    # Ray Data's bars on a terminal; elsewhere it would log its progress as INFO lines every few seconds.
    context.enable_progress_bars = verbose or sys.stderr.isatty()


def _loopback_only(on: bool) -> None:
    """A Ray of our own answers on this machine only: every server it starts binds 127.0.0.1.

    That is Ray's single-machine mode (its default on macOS and Windows):
    its processes read the variable when they start, and this process read
    it when it imported Ray, hence the constant too. Turned off again when
    the build ends, for a later connection to a cluster from this process.
    """
    if on:
        os.environ[RAY_CLUSTER_MODE] = "0"
    else:
        os.environ.pop(RAY_CLUSTER_MODE, None)
    ray_constants.ENABLE_RAY_CLUSTER = not on


def stop_ray() -> None:
    ray.shutdown()
    if os.environ.get(RAY_CLUSTER_MODE) == "0":
        _loopback_only(False)


def get(refs):
    """`ray.get`, with a worker's DataError (a file that cannot be opened) raised as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, DataError):
            raise err.cause from None
        raise
