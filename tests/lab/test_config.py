"""Config dataclasses, presets, overrides, (de)serialisation and atomic writes."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muonclip.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from muonclip.lab.config import (
    ConfigError,
    DataCfg,
    GPTConfig,
    OptimCfg,
    RunCfg,
    TrainConfig,
    apply_overrides,
    config_hash,
    from_dict,
    load_config,
    save_config,
    to_dict,
    to_json,
)
from muonclip.lab.presets import PRESET_DESCRIPTIONS, PRESETS, get_preset, list_presets, register_preset

# --------------------------------------------------------------------------- presets


def test_tiny_and_small_presets():
    tiny = get_preset("tiny")
    assert (tiny.model.d_model, tiny.model.n_layer, tiny.model.n_head, tiny.model.seq_len) == (32, 2, 4, 32)
    assert (tiny.run.batch_size, tiny.run.steps) == (8, 30)
    small = get_preset("small")
    m = small.model
    assert (m.d_model, m.n_layer, m.n_head, m.head_size, m.seq_len) == (128, 4, 4, 32, 128)
    assert (small.run.batch_size, small.run.steps) == (16, 600)
    assert (small.optim.lr, small.optim.weight_decay, small.optim.optimizer) == (0.02, 0.1, "muonclip")
    for name in PRESETS:
        assert PRESET_DESCRIPTIONS[name]
    assert [n for n, _ in list_presets()] == sorted(PRESETS)


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError) as info:
        get_preset("smal")
    msg = str(info.value)
    assert "'small'" in msg and "tiny" in msg and "available" in msg


def test_register_preset():
    name = "unit-test-preset"
    cfg = apply_overrides(get_preset("tiny"), ["steps=5"])
    try:
        register_preset(name, cfg, "for the test")
        assert get_preset(name) is cfg
        with pytest.raises(ConfigError, match="already registered"):
            register_preset(name, cfg, "again")
        register_preset(name, get_preset("tiny"), "replaced", overwrite=True)
        assert PRESET_DESCRIPTIONS[name] == "replaced"
        with pytest.raises(ConfigError, match="description"):
            register_preset("other-name", cfg, "  ")
        with pytest.raises(ConfigError, match="must match"):
            register_preset("Bad Name", cfg, "x")
    finally:
        PRESETS.pop(name, None)
        PRESET_DESCRIPTIONS.pop(name, None)


# --------------------------------------------------------------------------- overrides


def test_override_dotted_and_bare_keys():
    base = get_preset("small")
    cfg = apply_overrides(base, ["steps=40", "optim.lr=0.01", "adamw_lr=1e-3", "model.d_model=64"])
    assert cfg.run.steps == 40 and isinstance(cfg.run.steps, int)
    assert cfg.optim.lr == 0.01 and cfg.optim.adamw_lr == 0.001
    assert cfg.model.d_model == 64
    assert base.run.steps == 600  # the original is untouched
    assert apply_overrides(base, ["lr=0.01"]) == apply_overrides(base, ["optim.lr=0.01"])
    assert apply_overrides(base, []) is base


@pytest.mark.parametrize(
    "override, path, expected",
    [
        ("steps=1_000", "run.steps", 1000),
        ("steps=1e3", "run.steps", 1000),
        ("lr=3", "optim.lr", 3.0),
        ("lr=.5", "optim.lr", 0.5),
        ("nesterov=false", "optim.nesterov", False),
        ("nesterov=No", "optim.nesterov", False),
        ("qk_norm=true", "model.qk_norm", True),
        ("tie_embeddings=1", "model.tie_embeddings", True),
        ("betas=0.8,0.99", "optim.betas", (0.8, 0.99)),
        ("betas=(0.8, 0.99)", "optim.betas", (0.8, 0.99)),
        ("betas=[0.5, 0]", "optim.betas", (0.5, 0.0)),
        ("grad_clip=none", "optim.grad_clip", None),
        ("grad_clip=1.5", "optim.grad_clip", 1.5),
        ("logit_softcap=30", "model.logit_softcap", 30.0),
        ("n_kv_head=None", "model.n_kv_head", None),
        ("q_lora_rank=16", "model.q_lora_rank", 16),
        ("device=cuda:0", "run.device", "cuda:0"),
        ("source='my corpus.txt'", "data.source", "my corpus.txt"),
        ("ns_method=polar_express", "optim.ns_method", "polar_express"),
        ("update_scale=original", "optim.update_scale", "original"),
        ("hf_dataset=a=b", "data.hf_dataset", "a=b"),
        ("optimizer=adamw", "optim.optimizer", "adamw"),
        ("kind=wsd", "schedule.kind", "wsd"),
    ],
)
def test_override_value_parsing(override, path, expected):
    cfg = apply_overrides(get_preset("tiny"), [override])
    section, name = path.split(".")
    value = getattr(getattr(cfg, section), name)
    assert value == expected
    assert type(value) is type(expected)


def test_override_mapping_form():
    cfg = apply_overrides(get_preset("tiny"), {"steps": 12, "optim.betas": [0.5, 0.6], "lr": "0.1"})
    assert cfg.run.steps == 12 and cfg.optim.betas == (0.5, 0.6) and cfg.optim.lr == 0.1
    with pytest.raises(ConfigError, match="expected an int"):
        apply_overrides(get_preset("tiny"), {"steps": 1.5})


def test_overrides_validated_together():
    # GQA needs attention and n_kv_head changed together; order must not matter
    a = apply_overrides(get_preset("small"), ["n_kv_head=2", "attention=gqa"])
    b = apply_overrides(get_preset("small"), ["attention=gqa", "n_kv_head=2"])
    assert a == b and a.model.kv_heads == 2
    later_wins = apply_overrides(get_preset("tiny"), ["steps=3", "run.steps=4"])
    assert later_wins.run.steps == 4


def test_unknown_key_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'stpes'.*'steps'"):
        apply_overrides(get_preset("tiny"), ["stpes=3"])
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        apply_overrides(get_preset("tiny"), ["optim.lrr=3"])
    with pytest.raises(ConfigError, match="section"):
        apply_overrides(get_preset("tiny"), ["optim=3"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(get_preset("tiny"), ["steps"])
    with pytest.raises(ConfigError, match="identifier"):
        apply_overrides(get_preset("tiny"), ["st eps=3"])
    with pytest.raises(ConfigError, match="list"):
        apply_overrides(get_preset("tiny"), "steps=3")


@pytest.mark.parametrize(
    "override, match",
    [
        ("steps=abc", "cannot parse 'abc' as an int"),
        ("steps=1.5", "as an int"),
        ("lr=fast", "as a float"),
        ("lr=nan", "NaN"),
        ("nesterov=maybe", "as a bool"),
        ("betas=0.9", "expected 2"),
        ("betas=0.9,x", r"optim\.betas\[1\]"),
        ("attention=mhaa", r"did you mean 'mha'"),
        ("optimizer=sgd", "one of 'muonclip', 'muon', 'adamw'"),
        ("steps=none", "as an int"),
        ("ns_method=ns4", "did you mean 'ns5'"),
        ("update_scale=rms", "one of 'rms_match'"),
        ("steps=0", "run.steps must be >= 1"),
        ("lr=-1", "must be > 0"),
        ("n_kv_head=3", "must divide"),
        ("n_kv_head=2", "needs n_kv_head == n_head"),
        ("val_fraction=1.5", r"\(0, 1\)"),
        ("tokenizer=bpe", "model.vocab_size=1024"),
        ("warmup_steps=100", "exceeds run.steps"),
    ],
)
def test_bad_values(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(get_preset("tiny"), [override])


def test_bpe_needs_matching_vocab():
    cfg = apply_overrides(get_preset("tiny"), ["tokenizer=bpe", "bpe_vocab_size=512", "vocab_size=512"])
    assert cfg.data.tokenizer_vocab_size == 512 == cfg.model.vocab_size


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


@dataclass(frozen=True)
class _A:
    width: int = 1
    alpha: float = 0.5


@dataclass(frozen=True)
class _B:
    width: int = 2
    name: str = "b"


@dataclass(frozen=True)
class _Nested:
    a: _A = field(default_factory=_A)
    b: _B = field(default_factory=_B)


def test_ambiguous_bare_key_is_an_error():
    cfg = _Nested()
    with pytest.raises(ConfigError, match=r"ambiguous.*a\.width.*b\.width"):
        apply_overrides(cfg, ["width=3"])
    out = apply_overrides(cfg, ["a.width=3", "alpha=2", "name=z"])
    assert out == _Nested(_A(3, 2.0), _B(2, "z"))


def test_no_bare_key_is_ambiguous_in_train_config():
    names = [name for sec in to_dict(TrainConfig()).values() for name in sec]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"bare override keys now ambiguous: {sorted(dupes)}"


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_float_override_roundtrip(x):
    cfg = apply_overrides(get_preset("tiny"), [f"lr={x!r}"])
    assert cfg.optim.lr == x


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=10**9))
def test_int_override_roundtrip(n):
    assert apply_overrides(get_preset("tiny"), [f"steps={n}"]).run.steps == n


# --------------------------------------------------------------------------- dataclasses


def test_sections_are_frozen_and_validate():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.steps = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="d_model"):
        GPTConfig(d_model=30, n_head=4)
    assert GPTConfig(d_model=30, n_head=4, head_dim=8).head_size == 8
    with pytest.raises(ConfigError, match="expected an int"):
        RunCfg(steps="10")  # type: ignore[arg-type]
    assert OptimCfg(betas=[0.1, 0.2]).betas == (0.1, 0.2)  # type: ignore[arg-type]
    assert isinstance(OptimCfg(lr=1).lr, float)
    assert GPTConfig(attention="mla").attention == "mla"
    assert DataCfg().tokenizer_vocab_size == 256


# --------------------------------------------------------------------------- dict / JSON / hash


def test_to_dict_from_dict_roundtrip():
    cfg = apply_overrides(get_preset("small"), ["betas=0.8,0.9", "grad_clip=1.0", "kind=cosine"])
    d = to_dict(cfg)
    assert set(d) == {"model", "data", "optim", "schedule", "run"}
    assert from_dict(d) == cfg
    assert from_dict(json.loads(to_json(cfg))) == cfg  # lists become tuples again
    assert from_dict({}) == TrainConfig()
    assert from_dict({"run": {"steps": 7}}).run.steps == 7


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown field run\.stpes.*'steps'"):
        from_dict({"run": {"stpes": 3}})
    with pytest.raises(ConfigError, match=r"unknown config section 'optimizer'.*'optim'"):
        from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match="mapping"):
        from_dict({"run": [1, 2]})
    with pytest.raises(ConfigError, match="expected a float"):
        from_dict({"optim": {"lr": "0.1"}})


def test_save_load_roundtrip(tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["seed=7", "betas=0.85,0.9", "logit_softcap=15"])
    path = save_config(cfg, tmp_path / "run" / "config.json")
    assert path.exists()
    assert load_config(path) == cfg
    assert config_hash(load_config(path)) == config_hash(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["optim"]["betas"] == [0.85, 0.9]


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"run": {"bogus": 1}}', encoding="utf-8")
    with pytest.raises(ConfigError, match=str(unknown.name)):
        load_config(unknown)


def test_config_hash_stable_and_sensitive():
    a = get_preset("small")
    h = config_hash(a)
    assert len(h) == 12 and all(c in "0123456789abcdef" for c in h)
    assert config_hash(from_dict(to_dict(a))) == h
    assert config_hash(apply_overrides(a, ["lr=0.02"])) == h  # same values, same hash
    assert config_hash(apply_overrides(a, ["lr=0.021"])) != h
    assert config_hash(get_preset("tiny")) != h
    assert len(config_hash(a, length=64)) == 64


def test_config_hash_same_in_another_process():
    code = ("from muonclip.lab.config import config_hash; from muonclip.lab.presets import get_preset; "
            "print(config_hash(get_preset('small')))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == config_hash(get_preset("small"))


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes(tmp_path):
    p = atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_text(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    q = atomic_write_json(tmp_path / "c.json", {"x": [1, 2]})
    assert json.loads(q.read_text(encoding="utf-8")) == {"x": [1, 2]}
    assert sorted(x.name for x in tmp_path.rglob("*") if x.is_file()) == ["b.bin", "c.json"]
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    assert p.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # umask respected


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "keep.txt"
    p.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(p, "new")
    assert p.read_text(encoding="utf-8") == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["keep.txt"]  # temp file removed


def test_custom_ns_coefficients_reach_the_optimizer_and_bad_ones_are_refused():
    from muonclip.config import ConfigError
    from muonclip.lab import apply_overrides, get_preset
    from muonclip.lab.train import build_model, build_optimizer

    cfg = apply_overrides(get_preset("tiny"), ['optim.ns_method="3.4445,-4.775,2.0315;2,-1.5,0.5"'])
    opt = build_optimizer(build_model(cfg), cfg)
    assert opt.param_groups[0]["orthogonalizer"] == ((3.4445, -4.775, 2.0315), (2.0, -1.5, 0.5))
    for bad, match in (('"1,2;3,4,5"', "must be \\(a, b, c\\)"), ('"a,b,c"', "are numbers"),
                       ('"1,2,inf"', "finite")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(get_preset("tiny"), [f"optim.ns_method={bad}"])
