"""Configuration: the one source of truth for a job's settings.

Owns the typed schema (schema.py) and the checks across its sections
(consistency.py), loading YAML with `extends`, presets and
dotted overrides (loading.py, presets.py), and what of a config may be written
(secrets.py). Imports model/, data_pipeline/ and launch/ for their sections,
pretrain/errors.py and pretrain/layout.py, and pretrain/weights/ for one thing:
the model section of `train.init_from`'s folder. Nothing else of pretrain/.
"""

from pretrain.config.loading import (
    load_config,
    save_config,
    tracking_uri_chosen,
    tracking_uri_origin,
    with_absolute_paths,
)
from pretrain.config.schema import (
    CheckpointConfig,
    Config,
    EvalConfig,
    ExportConfig,
    LRScheduleConfig,
    OptimizerConfig,
    ParallelConfig,
    SampleConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "CheckpointConfig",
    "Config",
    "EvalConfig",
    "ExportConfig",
    "LRScheduleConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "SampleConfig",
    "TrackingConfig",
    "TrainConfig",
    "load_config",
    "save_config",
    "tracking_uri_chosen",
    "tracking_uri_origin",
    "with_absolute_paths",
]
