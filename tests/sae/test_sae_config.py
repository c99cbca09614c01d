"""SAEConfig on the typed-config module: overrides, save/load, the cache hash and the resume hash."""
from __future__ import annotations

import hashlib
import json

import pytest

from muonclip.config import ConfigError, apply_overrides
from muonclip.sae.config import (
    DEFAULT,
    QUICK,
    RESUMABLE_KEYS,
    SAEConfig,
    load_sae_config,
    sae_config_hash,
    sae_from_dict,
    sae_state_hash,
    sae_to_dict,
    save_sae_config,
)


def test_overrides_and_close_matches():
    cfg = apply_overrides(QUICK, ["optimizer=muon", "l1_coeff=3", "betas=0.8,0.9", "muon_lr=none"])
    assert (cfg.optimizer, cfg.l1_coeff, cfg.betas, cfg.muon_lr) == ("muon", 3.0, (0.8, 0.9), None)
    with pytest.raises(ConfigError, match=r"unknown config key 'l1_cof'.*'l1_coeff'"):
        apply_overrides(QUICK, ["l1_cof=2"])
    with pytest.raises(ConfigError, match=r"^kind: 'relu' is not one of 'l1', 'topk'"):
        apply_overrides(QUICK, ["kind=relu"])


def test_save_load_roundtrip(tmp_path):
    cfg = apply_overrides(DEFAULT, ["layer=1", "d_sae=64", "kind=topk", "k=4", "betas=0.5,0.6"])
    path = save_sae_config(cfg, tmp_path / "sae" / "config.json")
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]
    assert load_sae_config(path) == cfg
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["betas"] == [0.5, 0.6] and "sae" not in raw  # a flat file, as before
    assert sae_from_dict(raw) == cfg and sae_from_dict({"steps": 5}) == SAEConfig(steps=5)
    with pytest.raises(ConfigError, match=r"unknown field sae\.stepz.*'steps'"):
        sae_from_dict({"stepz": 5})
    with pytest.raises(ConfigError, match=r"no SAE config at .*; is it a `muonclip sae` directory\?"):
        load_sae_config(tmp_path / "missing" / "config.json")


def test_config_hash_is_the_one_sae_caches_were_named_with():
    for cfg in (DEFAULT, QUICK):
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in sae_to_dict(cfg).items()}
        old = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
        assert sae_config_hash(cfg) == old


def test_state_hash_ignores_only_resumable_keys():
    assert set(RESUMABLE_KEYS) == {"steps", "checkpoint_every"}
    longer = apply_overrides(QUICK, ["steps=9000", "checkpoint_every=7"])
    assert sae_state_hash(longer) == sae_state_hash(QUICK) and len(sae_state_hash(QUICK)) == 16
    assert sae_config_hash(longer) != sae_config_hash(QUICK)
    assert sae_state_hash(apply_overrides(QUICK, ["lr=0.01"])) != sae_state_hash(QUICK)
