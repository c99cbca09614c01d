"""Checkpoints are data, never code: a hostile pickle with a valid header and checksum is refused
(by the loader, by `train --resume` and by the probe) without running; what muonclip writes is
plain and round-trips; the previous format is read safely and rewritten; unknown formats refused."""
import hashlib
import io
import json
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from muonclip.cli import main as cli_main
from muonclip.lab import apply_overrides, get_preset
from muonclip.lab.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    check_plain,
    load_checkpoint,
    save_checkpoint,
)
from muonclip.lab.metrics import read_metrics
from muonclip.lab.probe import attention_entropy
from muonclip.lab.train import build_model, build_optimizer, train

MAGIC_V1 = b"MUONCLIP-CKPT-1\n"


@pytest.fixture
def tiny_cfg(corpus_file):
    return apply_overrides(get_preset("tiny"), [f"data.source={corpus_file}", "run.steps=4", "run.eval_every=0",
                                                "run.spectra_every=0", "run.checkpoint_every=0"])


def _payload(path):
    return path.read_bytes()[len(MAGIC_V1) + 65:]


def test_the_planted_payload_runs_code_under_a_free_unpickler(tmp_path, plant_pickle_payload):
    """The attack the other tests refuse is real: the old loader (weights_only=False) runs it."""
    marker = tmp_path / "MARKER"
    ckpt = plant_pickle_payload(tmp_path / "checkpoint.pt", marker)
    torch.load(io.BytesIO(_payload(ckpt)), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("magic", [b"MUONCLIP-CKPT-%d\n" % FORMAT_VERSION, MAGIC_V1])
def test_a_hostile_checkpoint_with_a_valid_checksum_is_refused_unrun(tmp_path, plant_pickle_payload, magic):
    marker = tmp_path / "MARKER"
    ckpt = plant_pickle_payload(tmp_path / "checkpoint.pt", marker, magic=magic)
    with pytest.raises(CheckpointError, match="refusing to load .*unpickling it could run code") as info:
        load_checkpoint(ckpt)
    assert "weights_only" not in str(info.value)  # torch's advice to turn the protection off is not relayed
    assert ("previous checkpoint format" in str(info.value)) == (magic == MAGIC_V1)
    assert not marker.exists()


def test_train_resume_and_the_probe_refuse_a_planted_checkpoint(tmp_path, tiny_cfg, plant_pickle_payload, capsys):
    run = tmp_path / "run"
    train(tiny_cfg, run, progress=False, log=lambda m: None)
    marker = tmp_path / "MARKER"
    plant_pickle_payload(run / "checkpoint.pt", marker)
    planted = (run / "checkpoint.pt").read_bytes()
    rows = (run / "metrics.jsonl").read_bytes()
    assert cli_main(["train", "--resume", str(run), "--set", "steps=6", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "could run code" in err
    with pytest.raises(CheckpointError, match="refusing to load"):
        attention_entropy(run)
    assert not marker.exists()
    # refused before anything was changed
    assert (run / "checkpoint.pt").read_bytes() == planted and (run / "metrics.jsonl").read_bytes() == rows


def test_a_previous_format_checkpoint_resumes_and_is_rewritten_in_this_format(tmp_path, tiny_cfg):
    """Version 1 files (same layout, read before with a free unpickler) load under the
    restricted one, and the resumed run's next checkpoint is written as version 2."""
    run = tmp_path / "run"
    train(tiny_cfg, run, progress=False, log=lambda m: None)
    assert (run / "checkpoint.pt").read_bytes().startswith(b"MUONCLIP-CKPT-2\n")
    buf = io.BytesIO()  # what format 1 wrote: the state itself, not packed
    torch.save(load_checkpoint(run / "checkpoint.pt"), buf)
    (run / "checkpoint.pt").write_bytes(_framed(MAGIC_V1, buf.getvalue()))
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    assert cli_main(["train", "--resume", str(run), "--set", "steps=6", "--no-progress"]) == 0
    assert (run / "checkpoint.pt").read_bytes().startswith(b"MUONCLIP-CKPT-2\n")
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 7))


def _framed(magic: bytes, payload: bytes) -> bytes:
    return magic + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def test_unknown_versions_and_non_archive_payloads_are_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"step": 1}, buf)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(_framed(b"MUONCLIP-CKPT-9\n", buf.getvalue()))
    with pytest.raises(CheckpointError, match="format this version cannot read"):
        load_checkpoint(path)
    legacy = io.BytesIO()
    torch.save({"step": 1}, legacy, _use_new_zipfile_serialization=False)
    path.write_bytes(_framed(b"MUONCLIP-CKPT-2\n", legacy.getvalue()))
    with pytest.raises(CheckpointError, match="not a torch.save archive"):
        load_checkpoint(path)
    zipped_list = io.BytesIO()
    torch.save([1, 2], zipped_list)
    path.write_bytes(_framed(MAGIC_V1, zipped_list.getvalue()))
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(path)
    path.write_bytes(_framed(b"MUONCLIP-CKPT-2\n", zipped_list.getvalue()))
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path)
    path.write_bytes(b"MUONCLIP-CKPT-2\n" + b"0" * 10)
    with pytest.raises(CheckpointError, match="bad header"):
        load_checkpoint(path)


class _Opaque:
    pass


@pytest.mark.parametrize("value,where", [
    (_Opaque(), "state['x']"),
    (np.float64(1.5), "state['x']"),  # a numpy scalar would need numpy's globals to load
    ({"a": [1, {2, 3}]}, "state['x']['a'][1]"),
    ({1.5: 2}, "key of type float"),
])
def test_save_refuses_state_that_would_not_load_back_and_writes_nothing(tmp_path, value, where):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the earlier checkpoint")
    with pytest.raises(TypeError, match=re.escape(f"checkpoint {where}" if "state" in where else where)):
        save_checkpoint(path, {"step": 1, "x": value})
    assert path.read_bytes() == b"the earlier checkpoint"
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(path, [1])


_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**62, 2**62) | st.text(max_size=8)
    | st.floats(allow_nan=False, width=64)
    | st.builds(lambda n, d: torch.arange(n, dtype=d), st.integers(0, 5), st.sampled_from(
        [torch.float32, torch.bfloat16, torch.int64, torch.float64])),
    lambda children: st.lists(children, max_size=3) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), children, max_size=3),
    max_leaves=12,
)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(b) is type(a) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(b) is type(a) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@given(value=_plain)
def test_plain_state_round_trips_exactly(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    state = {"value": value, "od": OrderedDict(w=torch.ones(2)), "dtype": torch.bfloat16, "device": torch.device("cpu"),
             "size": torch.Size([2, 3])}
    save_checkpoint(path, state)
    assert path.read_bytes().startswith(b"MUONCLIP-CKPT-%d\n" % FORMAT_VERSION)
    assert _same(load_checkpoint(path), state)


def test_packing_keeps_what_torch_save_kept(tmp_path):
    """Format 2 packs the tensors held in dicts into flat tensors; loading puts back equal,
    independent tensors, with a state_dict's OrderedDict and _metadata, strides of tensors it
    leaves alone (non-contiguous, requiring grad, in lists) and int keys."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = model.state_dict()
    wide = torch.arange(12.0).reshape(3, 4)
    state = {"model": sd, "opt": {0: {"m": torch.ones(4), "step": torch.tensor(3.0)}, 1: {"m": torch.zeros(0)}},
             "t": wide.t(), "grad": torch.ones(2, requires_grad=True), "listed": [torch.ones(2), (torch.zeros(1),)],
             "flags": torch.tensor([True, False]), "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert type(back["model"]) is OrderedDict and back["model"]._metadata == sd._metadata
    for key, value in sd.items():
        assert back["model"][key].dtype == value.dtype and torch.equal(back["model"][key], value), key
    assert torch.equal(back["opt"][0]["m"], torch.ones(4)) and back["opt"][0]["step"].shape == ()
    assert back["opt"][1]["m"].shape == (0,)
    assert back["t"].stride() == wide.t().stride() and torch.equal(back["t"], wide.t())
    assert back["grad"].requires_grad
    assert _same(back["listed"], state["listed"]) and _same(back["flags"], state["flags"])
    assert torch.equal(back["rng"], state["rng"])
    back["opt"][0]["m"].add_(1)  # views of one flat tensor must not overlap
    assert torch.equal(back["opt"][0]["step"], torch.tensor(3.0)) and torch.equal(back["opt"][1]["m"], torch.zeros(0))
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fresh.load_state_dict(back["model"])


@pytest.mark.parametrize("index", [*(json.dumps([entry]) for entry in (
    ["x", "g", 0, [3]], ["x", "g", 2, [2]], ["x", "nope", 0, [1]], ["y", "g", 0, [1]], ["x", "g", 0, [-1, 2]],
    ["x", "g", 0, ["1"]], "x")), "[[", [["x", "g", 0, [1]]]])
def test_a_tensor_index_that_does_not_fit_is_malformed(tmp_path, index):
    buf = io.BytesIO()
    torch.save({"state": {"x": None, "y": 1}, "tensors": index, "storage": {"g": torch.ones(2)}}, buf)
    (tmp_path / "c.pt").write_bytes(_framed(b"MUONCLIP-CKPT-2\n", buf.getvalue()))
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("optimizer,precision", [("adamw", "auto"), ("muon", "fp32"), ("muonclip", "auto"),
                                                 ("muonclip", "bf16")])
def test_every_lab_optimizers_state_is_plain_and_round_trips(tmp_path, tiny_cfg, optimizer, precision,
                                                              assert_same_optimizer_state):
    """The optimizer's state (whatever a precision choice such as ``auto`` records there)
    must load under weights_only=True: checked by the writer, loaded into a fresh optimizer,
    which then steps exactly as the original does (its state tensors are views of packed ones)."""
    cfg = apply_overrides(tiny_cfg, [f"optim.optimizer={optimizer}", f"optim.ns_precision={precision}",
                                     "optim.qk_clip_tau=0.5"])
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len))

    def step(m, o):
        _, loss = m(x, x)
        o.zero_grad()
        loss.backward()
        o.step()

    for _ in range(2):
        step(model, opt)
    state = opt.state_dict()
    check_plain(state)
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": model.state_dict(), "optimizer": state})
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded["optimizer"]["param_groups"] == state["param_groups"]
    twin = build_model(cfg)
    twin.load_state_dict(loaded["model"])
    fresh = build_optimizer(twin, cfg)
    fresh.load_state_dict(loaded["optimizer"])
    assert_same_optimizer_state(state, fresh.state_dict())
    for _ in range(2):
        step(model, opt)
        step(twin, fresh)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert_same_optimizer_state(opt.state_dict(), fresh.state_dict())
