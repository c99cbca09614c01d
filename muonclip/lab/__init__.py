"""CPU-scale training lab: corpora, tokenizers and run configuration."""
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .config import (
    ConfigError,
    DataCfg,
    GPTConfig,
    OptimCfg,
    RunCfg,
    ScheduleCfg,
    TrainConfig,
    apply_overrides,
    config_hash,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from .data import DataError, TokenDataset, default_corpus, load_corpus, load_hf_dataset, load_text
from .presets import PRESET_DESCRIPTIONS, PRESETS, get_preset, list_presets, register_preset
from .tokenizer import BPETokenizer, ByteTokenizer, TokenizerError, load_tokenizer, make_tokenizer

__all__ = [
    "PRESET_DESCRIPTIONS", "PRESETS", "ConfigError", "DataCfg", "GPTConfig", "OptimCfg", "RunCfg",
    "ScheduleCfg", "TrainConfig", "apply_overrides", "config_hash", "from_dict", "get_preset",
    "list_presets", "load_config", "register_preset", "save_config", "to_dict",
    "DataError", "TokenDataset", "default_corpus", "load_corpus", "load_hf_dataset", "load_text",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "BPETokenizer", "ByteTokenizer", "TokenizerError", "load_tokenizer", "make_tokenizer",
]
