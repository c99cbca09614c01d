"""The training loop: each optimizer trains, the metrics schema, exact resume, kill -9, errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from muonclip.cli import main as cli_main
from muonclip.io import exclusive_lock
from muonclip.lab import apply_overrides, get_preset
from muonclip.lab.checkpoint import CheckpointError, load_checkpoint
from muonclip.lab.config import ConfigError
from muonclip.lab.metrics import METRIC_FIELDS, read_metrics
from muonclip.lab.train import train


def tiny(corpus_file, *overrides):
    return apply_overrides(get_preset("tiny"), [f"data.source={corpus_file}", *overrides])


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "muonclip"])
def test_each_optimizer_trains_and_logs_the_schema(tmp_path, corpus_file, optimizer):
    cfg = tiny(corpus_file, f"optim.optimizer={optimizer}", "optim.qk_clip_tau=0.5")
    summary = train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    for r in rows:
        assert set(METRIC_FIELDS) <= set(r)
        assert len(r["max_logits"]) == cfg.model.n_layer and len(r["max_logits"][0]) == cfg.model.n_head
        assert r["max_logit"] == pytest.approx(max(max(h) for h in r["max_logits"]), abs=1e-4)
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < first - 0.3, (first, last)
    assert "val_loss" in rows[9] and "val_loss" in rows[-1]
    assert "spectra" in rows[0] and "spectra" in rows[9]
    if optimizer == "muonclip":
        assert any(r["n_clipped"] > 0 for r in rows) and min(r["min_gamma"] for r in rows) < 1
    else:
        assert all(r["n_clipped"] == 0 for r in rows)
    if optimizer == "muon":
        # rms_match: the hidden matrices' update RMS / lr is ~0.2 (plus a little weight decay).
        assert 0.12 < np.median([r["update_rms"] for r in rows]) < 0.3
    run = tmp_path / "run"
    for name in ("config.json", "run.json", "checkpoint.pt", "spectra.npz", "summary.json"):
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    assert json.loads((run / "config.json").read_text())["optim"]["optimizer"] == optimizer
    with np.load(run / "spectra.npz") as sp:
        assert sp["steps"].tolist() == [1, 10, 20, 30]
        assert sp["blocks.0.attn.q_proj.weight|update"].shape[0] == 4
    assert summary["complete"] and summary["steps"] == 30


def test_muon_update_spectrum_is_flat_and_adamw_is_not(tmp_path, corpus_file):
    erank = {}
    for opt in ("adamw", "muon"):
        train(tiny(corpus_file, f"optim.optimizer={opt}", "run.steps=10"), tmp_path / opt, progress=False)
        with np.load(tmp_path / opt / "spectra.npz") as sp:
            s = sp["blocks.1.mlp.up_proj.weight|update"][-1]
        p = s / s.sum()
        erank[opt] = float(np.exp(-(p * np.log(p)).sum())) / len(s)
    assert erank["muon"] > 0.9 > erank["adamw"] + 0.1, erank


@pytest.mark.parametrize("variant,optimizer", [
    ("model.qk_norm=true", "muon"), ("model.logit_softcap=30", "muon"), ("model.logit_softcap=30", "muonclip"),
])
def test_qk_norm_and_softcap_variants_train(tmp_path, corpus_file, variant, optimizer):
    train(tiny(corpus_file, variant, f"optim.optimizer={optimizer}", "optim.qk_clip_tau=0.5", "run.steps=20"),
          tmp_path / "run", progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3


def test_qk_norm_with_muonclip_is_a_config_error(tmp_path, corpus_file, capsys):
    code = cli_main(["train", "--data", str(corpus_file), "--optimizer", "muonclip", "--set", "model.qk_norm=true",
                     "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "alternatives" in capsys.readouterr().err


def _strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]


def test_resume_is_bit_exact(tmp_path, corpus_file):
    cfg = tiny(corpus_file, "run.steps=16", "run.checkpoint_every=4")
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=8)
    partial = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in partial] == list(range(1, 9))
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full_rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    split_rows = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert _strip_timing(full_rows) == _strip_timing(split_rows)


def test_resume_can_extend_steps_via_cli(tmp_path, corpus_file):
    run = tmp_path / "run"
    assert cli_main(["train", "--preset", "tiny", "--data", str(corpus_file), "--set", "steps=6",
                     "--out", str(run), "--no-progress"]) == 0
    assert cli_main(["train", "--resume", str(run), "--set", "steps=9", "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 10))
    assert cli_main(["train", "--resume", str(run), "--set", "optim.lr=0.5", "--no-progress"]) == 2


def test_sigkill_then_resume_has_each_row_once(tmp_path, corpus_file):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "muonclip", "train", "--preset", "tiny", "--data", str(corpus_file),
           "--set", "steps=400", "checkpoint_every=7", "eval_every=0", "spectra_every=0",
           "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(read_metrics(run / "metrics.jsonl")) >= 40:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run wrote fewer than 40 metrics rows in 120 s: too slow to test a kill after a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(read_metrics(run / "metrics.jsonl"))
    ckpt_step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert ckpt_step % 7 == 0 and killed_at - ckpt_step <= 7 + 1
    # resume with fewer total steps so the test stays short
    assert cli_main(["train", "--resume", str(run), "--set", "steps=60", "--no-progress"]) == 0
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == list(range(1, 61))


def _files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_cannot_end_before_the_checkpoint(tmp_path, corpus_file, capsys):
    """run.steps below the checkpoint's step used to be accepted: the checkpoint was relabelled
    with the smaller step while holding the later weights. It is refused, and nothing changes."""
    run = tmp_path / "run"
    train(tiny(corpus_file, "run.steps=6"), run, progress=False)
    before = _files(run)
    with pytest.raises(ConfigError, match="is at step 6, past run.steps=4"):
        train(tiny(corpus_file, "run.steps=4"), run, resume=True, progress=False)
    assert cli_main(["train", "--resume", str(run), "--set", "steps=4", "--no-progress"]) == 2
    assert "run.steps=6 or more" in capsys.readouterr().err
    assert _files(run) == before


def test_resuming_a_complete_run_changes_nothing(tmp_path, corpus_file, capsys):
    """It used to retrain nothing and overwrite summary.json with null losses."""
    run = tmp_path / "run"
    train(tiny(corpus_file, "run.steps=4"), run, progress=False)
    before = _files(run)
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert _files(run) == before
    assert printed == json.loads(before["summary.json"]) and printed["final_loss"] is not None
    (run / "summary.json").unlink()  # a kill between the last checkpoint and the summary
    rebuilt = train(tiny(corpus_file, "run.steps=4"), run, resume=True, progress=False)
    assert rebuilt == json.loads(before["summary.json"])


def test_force_starts_from_a_clean_directory(tmp_path, corpus_file):
    """--force used to keep the earlier run's checkpoint, summary, spectra, tokenizer and
    TensorBoard events, so a killed forced run looked finished and resumed from the old one."""
    run = tmp_path / "run"
    bpe = ["data.tokenizer=bpe", "data.bpe_vocab_size=300", "model.vocab_size=300"]
    train(tiny(corpus_file, "run.steps=4", "run.spectra_every=2", *bpe), run, progress=False)
    (run / "notes.txt").write_text("mine")
    old_tokenizer = (run / "tokenizer.json").read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("An entirely different corpus about optimisers and attention heads. " * 60, encoding="utf-8")
    assert cli_main(["train", "--data", str(other), "--set", "steps=2", "spectra_every=0", *bpe,
                     "--out", str(run), "--force", "--no-progress"]) == 0
    assert not (run / "spectra.npz").exists()
    assert (run / "tokenizer.json").read_bytes() != old_tokenizer  # trained on the new corpus
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert len(list((run / "tb").iterdir())) == 1  # only the new run's event file
    assert (run / "notes.txt").read_text() == "mine"  # not a run artifact: left alone


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    run.mkdir()
    args = ["train", "--data", str(corpus_file), "--set", "steps=2", "--out", str(run), "--no-progress"]
    with exclusive_lock(run / ".lock", "the test's run"):  # held by this (live) process
        assert cli_main(args) == 2
        assert f"is being written by process {os.getpid()}" in capsys.readouterr().err
    assert not (run / ".lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (run / ".lock").write_text(f"{dead.pid} {socket.gethostname()}")  # a killed run's lock
    assert cli_main(args) == 0
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_resume_refuses_a_metrics_log_that_misses_checkpointed_steps(tmp_path, corpus_file, damage):
    run = tmp_path / "run"
    cfg = tiny(corpus_file, "run.steps=10", "run.checkpoint_every=3")
    train(cfg, run, progress=False, stop_after=6)
    log = run / "metrics.jsonl"
    if damage == "truncate":
        log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:3]))
    else:
        log.unlink()
    with pytest.raises(CheckpointError, match="lacks .* of the 6 steps the checkpoint covers"):
        train(cfg, run, resume=True, progress=False)


def test_resume_cannot_stretch_a_decaying_schedule(tmp_path, corpus_file, capsys):
    """A cosine run resumed with more steps jumped from lr 0 back up; only a constant schedule
    continues exactly, so the others are refused."""
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(corpus_file), "--set", "steps=4", "schedule.kind=cosine",
                     "--out", str(run), "--no-progress"]) == 0
    assert cli_main(["train", "--resume", str(run), "--set", "steps=6", "--no-progress"]) == 2
    assert "cosine schedule" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--out", "elsewhere"], "takes neither --out nor --force"),
    (["--force"], "takes neither --out nor --force"),
])
def test_resume_rejects_out_and_force(tmp_path, corpus_file, capsys, extra, message):
    run = tmp_path / "run"
    train(tiny(corpus_file, "run.steps=2"), run, progress=False)
    assert cli_main(["train", "--resume", str(run), *extra, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_an_unwritable_run_directory_is_a_clean_error(tmp_path, corpus_file, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli_main(["train", "--data", str(corpus_file), "--out", str(blocker / "run"), "--no-progress"]) == 2
    assert "cannot write the run" in capsys.readouterr().err


def test_log_every_thins_tensorboard_and_keeps_every_metrics_row(tmp_path, corpus_file):
    """run.log_every used to do nothing; it sets the TensorBoard cadence, while metrics.jsonl
    keeps a row per step for the reports and the resume check."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny(corpus_file, "run.steps=6", "run.log_every=3"), run, progress=False)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 7))
    events = EventAccumulator(str(run / "tb")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [3, 6]


def test_corrupt_checkpoint_gives_clear_error(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    train(tiny(corpus_file, "run.steps=3"), run, progress=False)
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[-100] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run / "checkpoint.pt")
    assert cli_main(["train", "--resume", str(run), "--set", "steps=5", "--no-progress"]) == 2
    assert "corrupt" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a muonclip checkpoint"):
        load_checkpoint(run / "checkpoint.pt")


@pytest.mark.parametrize("args,message", [
    (["--preset", "nope"], "unknown preset"),
    (["--set", "stepz=3"], "stepz"),
    (["--set", "steps=many"], "steps"),
    (["--data", "/definitely/not/here.txt"], "not/here"),
])
def test_cli_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    code = cli_main(["train", *args, "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_datasets_package_is_a_clean_error(tmp_path, capsys, monkeypatch):
    """It used to print the ImportError's traceback."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    assert cli_main(["train", "--hf-dataset", "some/corpus", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "optional 'datasets' package" in err and "Traceback" not in err


def test_empty_corpus_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert cli_main(["train", "--data", str(empty), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err.lower()


def test_refuses_to_overwrite_an_existing_run(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(corpus_file), "--set", "steps=2", "--out", str(run), "--no-progress"]
    assert cli_main(args) == 0
    assert cli_main(args) == 2
    assert "--resume" in capsys.readouterr().err


# -- optimizer options and the device ---------------------------------------------------------
def test_optim_options_reach_the_optimizer():
    from muonclip.lab.train import build_model, build_optimizer

    cfg = apply_overrides(get_preset("tiny"), ["optim.normuon=true", "optim.cautious_weight_decay=true",
                                               "optim.muon_heads_per_block=2", "optim.ns_precision=fp32",
                                               "optim.qk_clip_granularity=layer"])
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    muon = next(g for g in opt.param_groups if g["algorithm"] == "muon")
    assert muon["normuon"] and muon["cautious_weight_decay"] and muon["heads_per_block"] == 2
    assert muon["ns_precision"] == "fp32" and opt.qk_clip_granularity == "layer"
    blocks = dict(zip(muon["param_names"], muon["head_blocks"], strict=True))
    assert blocks["blocks.0.attn.q_proj.weight"] == (0, cfg.model.head_size)
    assert blocks["blocks.0.mlp.up_proj.weight"] is None


def test_cautious_adamw_keeps_every_parameter_on_adamw():
    from muonclip import MuonClip
    from muonclip.lab.train import _hidden_params, build_model, build_optimizer

    cfg = apply_overrides(get_preset("tiny"), ["optim.optimizer=adamw", "optim.cautious_weight_decay=true"])
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, MuonClip) and {g["algorithm"] for g in opt.param_groups} == {"adamw"}
    assert all(g["cautious_weight_decay"] for g in opt.param_groups)
    assert {id(p) for p in _hidden_params(opt)} == {id(p) for n, p in model.named_parameters()
                                                     if model.param_roles()[n] == "matrix"}


def test_cuda_device_is_refused_clearly_where_there_is_none(tmp_path, monkeypatch):
    from muonclip.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = apply_overrides(get_preset("tiny"), ["run.device=cuda"])
    with pytest.raises(ConfigError, match="no CUDA device"):
        train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
        apply_overrides(get_preset("tiny"), ["run.device=tpu"])


def test_run_info_records_what_decides_the_numerics_beyond_the_config(monkeypatch):
    """run.json names the CPU capability, its bf16 flags and the Newton-Schulz dtype that
    ns_precision resolved to, so two runs of one config on different CPUs can be told apart."""
    import dataclasses

    from muonclip.lab.presets import get_preset
    from muonclip.lab.train import run_info
    from muonclip.optim import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("amx_bf16",))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 300, "bf16": 1000}')  # auto's measured rates there
    cfg = get_preset("tiny")
    for ns_precision, dtype in (("auto", "bfloat16"), ("fp32", "float32")):
        info = run_info(cfg.replace(optim=dataclasses.replace(cfg.optim, ns_precision=ns_precision)))
        assert info["ns_dtype"] == dtype
        assert info["cpu_bf16_flags"] == ["amx_bf16"]
        assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_run_info_records_each_matrix_newton_schulz_plan(monkeypatch):
    """run.json names the precision and form ns_precision="auto" chose for every Muon matrix
    (MuonClip.ns_plan()), so a run's numerics can be told apart across machines."""
    from muonclip.lab.presets import get_preset
    from muonclip.lab.train import build_model, build_optimizer, run_info
    from muonclip.optim import ns_auto

    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 100}')
    cfg = get_preset("tiny")
    optimizer = build_optimizer(build_model(cfg), cfg)
    plans = run_info(cfg, optimizer)["ns_plan"]
    muon = [n for g in optimizer.param_groups if g["algorithm"] == "muon" for n in g["param_names"]]
    assert sorted(plans) == sorted(muon) and plans
    assert {ns_auto.parse_plan(p)[0] for p in plans.values()} == {torch.float32}
    assert "ns_plan" not in run_info(cfg)
