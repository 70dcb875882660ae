"""Typed config: the schema (schema.py, ranges.py), the one loader (load.py), the resolved YAML (dump.py).

Every key a user can write is a dataclass field; YAML only sets values. Unknown or mistyped
keys, values outside a field's choices or range fail at load time, naming file:line (or the
override) and the nearest valid key.
"""

from maxlm.config.dump import dump_yaml, to_dict
from maxlm.config.flags import flag_type
from maxlm.config.load import CONFIGS_DIR, Where, build, coerce, from_dict, load_config, parse_override, read_yaml, suggest
from maxlm.config.ranges import Range, field_range, ranged
from maxlm.config.schema import (
    ChatTemplate,
    CheckpointConfig,
    ComputeDtype,
    Config,
    DataConfig,
    ExportConfig,
    HarnessConfig,
    Inconsistent,
    LoraConfig,
    MeshConfig,
    ModelConfig,
    PreferenceConfig,
    Remat,
    RewardModelConfig,
    RLConfig,
    RopeScalingConfig,
    SampleConfig,
    SourceConfig,
    Task,
    TokenizerConfig,
    TrainConfig,
    Tracker,
    Verifier,
    check_quantized_base,
    check_ranges,
    choices,
    expert_dim,
    head_dim,
    sliding_layers,
    validate,
)

__all__ = [
    "CONFIGS_DIR", "ChatTemplate", "CheckpointConfig", "ComputeDtype", "Config", "DataConfig", "ExportConfig", "HarnessConfig", "Inconsistent", "LoraConfig",
    "MeshConfig", "ModelConfig", "PreferenceConfig", "RLConfig", "Range", "Remat", "RewardModelConfig",
    "RopeScalingConfig", "SampleConfig", "SourceConfig", "Task", "TokenizerConfig", "TrainConfig", "Tracker", "Verifier",
    "Where", "build", "check_quantized_base", "check_ranges", "choices", "coerce", "dump_yaml", "expert_dim", "field_range", "flag_type", "from_dict",
    "head_dim", "load_config", "parse_override", "ranged", "read_yaml", "sliding_layers", "suggest", "to_dict", "validate",
]
