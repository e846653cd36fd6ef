"""ddpmkit's settings: one pydantic object with a section per YAML section (model, diffusion,
data, train, sample, fid), built from a preset, a YAML file and command-line overrides.

    from ddpmkit.settings import build_settings
    s = build_settings(preset="celeba32", sets=["train.lr=1e-4"])

Everything outside this package imports from here, never from its modules:
- `sections.py`: each section's fields, defaults and checks, and the limits they share (MAX_SEED);
- `build.py`: the whole `Settings`, the presets (`ddpmkit/presets/*.yaml`), YAML files, `--set`.
"""

from ddpmkit.settings.build import (
    DEFAULT_PRESET,
    PRESET_DIR,
    PRESET_MACHINE,
    PresetInfo,
    Settings,
    available_presets,
    build_settings,
    deep_merge,
    format_validation_error,
    parse_assignment,
    preset_dict,
    preset_info,
    preset_name,
    read_yaml,
    settings_from_dict,
)
from ddpmkit.settings.sections import (
    DATA_ROOT_ENV,
    DEFAULT_SAMPLE_BATCH,
    FID_WEIGHTS_ENV,
    GROUPNORM_EPS,
    GUIDANCE,
    MASK_NAMES,
    MAX_GUIDANCE,
    MAX_SEED,
    REPAINT_JUMP,
    REPAINT_RESAMPLE,
    REPAINT_STEPS,
    CompileChoice,
    DataConfig,
    DiffusionConfig,
    FidConfig,
    ModelConfig,
    Precision,
    SampleConfig,
    TrainConfig,
    check_unet_shape,
)

__all__ = [
    "DATA_ROOT_ENV", "DEFAULT_PRESET", "DEFAULT_SAMPLE_BATCH", "CompileChoice", "Precision", "FID_WEIGHTS_ENV",
    "GROUPNORM_EPS", "GUIDANCE", "MASK_NAMES", "MAX_GUIDANCE", "MAX_SEED", "PRESET_DIR", "PRESET_MACHINE",
    "REPAINT_JUMP", "REPAINT_RESAMPLE", "REPAINT_STEPS",
    "DataConfig", "DiffusionConfig", "FidConfig", "ModelConfig", "PresetInfo", "SampleConfig", "Settings",
    "TrainConfig", "available_presets", "build_settings", "check_unet_shape", "deep_merge",
    "format_validation_error", "parse_assignment", "preset_dict", "preset_info", "preset_name", "read_yaml",
    "settings_from_dict",
]
