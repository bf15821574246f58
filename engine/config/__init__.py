"""The torch-free bottom layer: the job spec's dataclasses with their form metadata
(``schema``), ``ConfigError``, and the architecture presets (``engine.config.presets``).
Choice fields name their registries ("engine.nn.norm:NORMS"), imported only when their keys
are needed, so importing this package imports no torch and no other engine layer."""

from .errors import ConfigError
from .schema import FIELD_GROUPS, SECTIONS, DataConfig, JobSpec, ModelConfig, TrainConfig, choices, field_specs, resolve

__all__ = ["ConfigError", "ModelConfig", "DataConfig", "TrainConfig", "JobSpec", "SECTIONS", "FIELD_GROUPS",
           "choices", "field_specs", "resolve"]
