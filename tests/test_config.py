"""The typed-config module: every GPTConfig field settable as model.X, close-match errors, save/load, hash exclude."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from muonclip.config import (
    ConfigError,
    apply_overrides,
    config_hash,
    did_you_mean,
    from_dict,
    load_config,
    parse_value,
    save_config,
    to_dict,
    to_json,
    validate_fields,
)
from muonclip.lab.config import TrainConfig
from muonclip.lab.config import load_config as load_train_config
from muonclip.lab.presets import get_preset
from muonclip.lab.resume import RESUMABLE_KEYS, model_hash
from muonclip.lab.train import build_model
from muonclip.models import GPTConfig

# A valid, non-default text for every GPTConfig field, each set alone on the tiny preset
# (d_model 32, 4 heads, seq_len 32). A new GPTConfig field must be added here.
MODEL_VALUES = {
    "vocab_size": ("300", 300),
    "d_model": ("64", 64),
    "n_layer": ("3", 3),
    "n_head": ("2", 2),
    "n_kv_head": ("4", 4),
    "head_dim": ("16", 16),
    "seq_len": ("64", 64),
    "attention": ("gqa", "gqa"),
    "mlp_ratio": ("3.5", 3.5),
    "d_ff": ("48", 48),
    "tie_embeddings": ("true", True),
    "qk_bias": ("true", True),
    "qk_norm": ("true", True),
    "logit_softcap": ("30", 30.0),
    "rope_base": ("5e5", 500000.0),
    "q_lora_rank": ("16", 16),
    "kv_lora_rank": ("32", 32),
    "qk_nope_head_dim": ("8", 8),
    "qk_rope_head_dim": ("8", 8),
    "v_head_dim": ("8", 8),
}


def test_value_table_covers_every_gpt_config_field():
    assert set(MODEL_VALUES) == {f.name for f in dataclasses.fields(GPTConfig)}


@pytest.mark.parametrize("name", sorted(MODEL_VALUES))
def test_every_gpt_config_field_is_settable_as_model_x(name):
    text, expected = MODEL_VALUES[name]
    base = get_preset("tiny")
    assert getattr(base.model, name) != expected
    cfg = apply_overrides(base, [f"model.{name}={text}"])
    value = getattr(cfg.model, name)
    assert value == expected and type(value) is type(expected)
    assert isinstance(cfg.model, GPTConfig)
    assert build_model(cfg).config == cfg.model  # the model section reaches the model as it is


def test_mla_fields_shape_the_model():
    cfg = apply_overrides(get_preset("tiny"), ["model.attention=mla", "model.q_lora_rank=16", "model.kv_lora_rank=24",
                                                "model.qk_nope_head_dim=6", "model.qk_rope_head_dim=4",
                                                "model.v_head_dim=10", "model.d_ff=40"])
    shapes = {n: tuple(p.shape) for n, p in build_model(cfg).named_parameters()}
    assert shapes["blocks.0.attn.q_a_proj.weight"] == (16, 32)
    assert shapes["blocks.0.attn.q_b_proj.weight"] == (4 * (6 + 4), 16)
    assert shapes["blocks.0.attn.kv_a_proj.weight"] == (24 + 4, 32)
    assert shapes["blocks.0.attn.kv_b_proj.weight"] == (4 * (6 + 10), 24)
    assert shapes["blocks.0.mlp.up_proj.weight"] == (40, 32)


def test_unknown_model_key_suggests_the_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.mlp_ration'.*'model\.mlp_ratio'"):
        apply_overrides(get_preset("tiny"), ["model.mlp_ration=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.rope_theta'.*'model\.rope_base'"):
        apply_overrides(get_preset("tiny"), ["model.rope_theta=500000"])
    with pytest.raises(ConfigError, match=r"unknown config key 'd_modle'.*'d_model'"):
        apply_overrides(get_preset("tiny"), ["d_modle=64"])


def test_model_values_are_checked_by_the_lab_checker():
    with pytest.raises(ConfigError, match=r"model\.attention: 'mla2' is not one of 'mha', 'gqa', 'mla'.*'mla'"):
        apply_overrides(get_preset("tiny"), ["model.attention=mla2"])
    with pytest.raises(ConfigError, match=r"model\.d_ff: cannot parse 'wide' as int \| None"):
        apply_overrides(get_preset("tiny"), ["model.d_ff=wide"])
    with pytest.raises(ConfigError, match=r"model\.d_model: expected an int"):
        GPTConfig(d_model="32")  # type: ignore[arg-type]
    assert isinstance(GPTConfig(mlp_ratio=4).mlp_ratio, float)


def test_presets_keep_mlp_ratio_4_while_gpt_config_defaults_to_8_over_3():
    import muonclip.reproduce  # noqa: F401  (registers the story presets)

    assert GPTConfig().mlp_ratio == 8 / 3 and TrainConfig().model.mlp_ratio == 8 / 3
    for name in ("tiny", "small", "dragon", "guardrail", "spectra", "lifecycle", "efficiency"):
        model = get_preset(name).model
        assert model.mlp_ratio == 4.0 and model.d_ff is None
        assert model.hidden_dim == 4 * model.d_model


# --------------------------------------------------------------------------- a config of its own


@dataclass(frozen=True)
class _Inner:
    _section = "inner"

    width: int = 4
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    pair: tuple[float, float] = (1.0, 2.0)
    name: str | None = None

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    other: _Inner = field(default_factory=lambda: _Inner(width=8))


def test_save_load_roundtrip_is_atomic_and_exact(tmp_path):
    cfg = apply_overrides(_Outer(), ["inner.width=5", "inner.pair=3,4", "other.name=x y", "other.mode=b"])
    path = save_config(cfg, tmp_path / "deep" / "config.json")
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left
    assert load_config(_Outer, path) == cfg
    assert json.loads(path.read_text(encoding="utf-8"))["inner"]["pair"] == [3.0, 4.0]
    assert from_dict(_Outer, json.loads(to_json(cfg))) == cfg
    assert to_dict(cfg)["other"] == {"width": 8, "ratio": 0.5, "mode": "b", "pair": (1.0, 2.0), "name": "x y"}
    flat = _Inner(width=2, name="n")
    assert load_config(_Inner, save_config(flat, tmp_path / "flat.json")) == flat


def test_train_config_roundtrip_and_old_rope_theta_file(tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["model.d_ff=40", "model.rope_base=1e5", "model.attention=gqa",
                                               "model.n_kv_head=2"])
    path = save_config(cfg, tmp_path / "config.json")
    assert load_train_config(path) == cfg
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"]["rope_theta"] = data["model"].pop("rope_base")  # a config.json from before GPTConfig
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"old\.json: model\.rope_theta is now model\.rope_base.*rename the key"):
        load_train_config(old)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"no widget config at .*missing\.json \(file not found\); hint"):
        load_config(_Outer, tmp_path / "missing.json", what="widget config", hint="; hint")
    bad = tmp_path / "bad.json"
    bad.write_text('{"inner": {"widht": 3}}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.json: unknown field inner\.widht.*'width'"):
        load_config(_Outer, bad)
    with pytest.raises(ConfigError, match=r"unknown config section 'iner'.*'inner'"):
        from_dict(_Outer, {"iner": {}})


def test_config_hash_exclude():
    a = _Outer()
    b = apply_overrides(a, ["inner.width=7"])
    c = apply_overrides(a, ["other.ratio=0.25"])
    assert config_hash(a) != config_hash(b)
    assert config_hash(a, exclude=["inner.width"]) == config_hash(b, exclude=["inner.width"])
    assert config_hash(a, exclude=["inner.width"]) != config_hash(c, exclude=["inner.width"])
    assert config_hash(a, exclude=["inner.width"]) != config_hash(a)
    assert config_hash(a) == config_hash(_Outer())  # exclude never mutates the config
    assert len(config_hash(a, 16, exclude=["inner"])) == 16  # a whole section
    with pytest.raises(ConfigError, match=r"cannot exclude unknown key 'inner\.widht'.*'inner\.width'"):
        config_hash(a, exclude=["inner.widht"])


def test_lab_resume_hash_ignores_only_resumable_keys():
    base = get_preset("tiny")
    changed = {"run.device": "cuda"}  # a valid other value per key (the device must be cpu/cuda)
    longer = apply_overrides(base, [f"{key}={changed.get(key, 7)}" for key in RESUMABLE_KEYS])
    assert model_hash(longer) == model_hash(base)
    assert model_hash(apply_overrides(base, ["model.rope_base=1e5"])) != model_hash(base)


@pytest.mark.parametrize("text, tp, expected", [
    ("1_000", int, 1000), ("1e3", int, 1000), (".5", float, 0.5), ("off", bool, False), ("None", int | None, None),
    ("'a b'", str, "a b"), ("(1, 2)", tuple[int, ...], (1, 2)), ("b", Literal["a", "b"], "b"),
])
def test_parse_value(text, tp, expected):
    value = parse_value(text, tp, "x")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override", ["optim.lr=inf", "optim.qk_clip_tau=-inf"])
def test_non_finite_floats_are_refused_by_name(override):
    """inf passed every range check and failed later, unnamed, when the config was saved."""
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        apply_overrides(get_preset("tiny"), [override])


def test_muon_heads_per_block_must_divide_the_heads():
    cfg = get_preset("tiny")
    with pytest.raises(ConfigError, match="muon_heads_per_block=3 does not divide"):
        apply_overrides(cfg, ["optim.muon_heads_per_block=3"])
    apply_overrides(cfg, ["optim.muon_heads_per_block=8"])  # more than the heads: one block per matrix


def test_close_matches_are_named_once():
    assert did_you_mean("l1_coef", ["l1_coeff", "l1_coeff", "lr"]) == " (did you mean 'l1_coeff'?)"
