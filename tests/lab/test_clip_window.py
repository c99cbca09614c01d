"""The clip-window ablation (``optim.qk_clip_window``): the clip acts on the max over recent batches."""
import hashlib
import json

import pytest
import torch

from muonclip.config import config_hash, to_dict
from muonclip.lab import apply_overrides, get_preset
from muonclip.lab.checkpoint import load_checkpoint
from muonclip.lab.config import ConfigError
from muonclip.lab.metrics import read_metrics
from muonclip.lab.train import train
from muonclip.reproduce.results import heads_above


def tiny(corpus_file, *overrides):
    return apply_overrides(get_preset("tiny"), [f"data.source={corpus_file}", "optim.optimizer=muonclip",
                                                "optim.qk_clip_tau=0.5", *overrides])


def test_the_clip_acts_on_the_window_maximum(tmp_path, corpus_file):
    # tau 0.3: the heads pass it from about step 14 of 30, so some heads sit under tau on this
    # batch while the window's maximum is over it (measured: 9-12 such steps at tau 0.2-0.4)
    train(tiny(corpus_file, "optim.qk_clip_window=4", "optim.qk_clip_tau=0.3", "run.steps=30"), tmp_path / "run",
          progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    raised = 0
    for r in rows:
        now, window = torch.tensor(r["max_logits"]), torch.tensor(r["max_logits_clip"])
        assert bool((window >= now).all()), r["step"]
        raised += int((window > now).sum())
        # the optimizer's count of clipped heads is the count over the window's maxima
        assert r["n_clipped"] == len(heads_above(r, 0.3)), r["step"]
    assert rows[0]["max_logits_clip"] == rows[0]["max_logits"]  # no earlier batch at step 1
    assert raised > 0
    assert any(r["n_clipped"] > sum(v > 0.3 for layer in r["max_logits"] for v in layer) for r in rows)


def test_a_window_run_resumes_bit_exact(tmp_path, corpus_file):
    cfg = tiny(corpus_file, "optim.qk_clip_window=3", "run.steps=12", "run.checkpoint_every=4")
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=6)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}
             for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}
                     for r in read_metrics(tmp_path / "split" / "metrics.jsonl")]


def test_window_one_is_k2_and_keeps_every_cached_hash(corpus_file):
    base = tiny(corpus_file)
    assert base.optim.qk_clip_window == 1
    # the hash of a default config is the hash it had before the field existed
    data = to_dict(base)
    del data["optim"]["qk_clip_window"]
    legacy = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert config_hash(base) == legacy
    assert config_hash(apply_overrides(base, ["optim.qk_clip_window=2"])) != legacy
    assert config_hash(base, exclude=["optim.qk_clip_window"]) == legacy
    with pytest.raises(ConfigError, match="qk_clip_window"):
        apply_overrides(base, ["optim.qk_clip_window=0"])
