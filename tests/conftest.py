"""Shared test helpers: deterministic seeding, hypothesis profiles and small toy modules."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

settings.register_profile(
    "default", deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ci", deadline=None, max_examples=15, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)`` imports ``benchmarks/<name>.py`` (a script, not a package
    module) so a test can run it at toy size."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session", autouse=True)
def _one_ns_rates_measurement(tmp_path_factory):
    """One measurement of the Newton-Schulz product rates per thread count for the whole
    session: the test process and every process it starts (workers, torchrun ranks, CLI runs)
    share one JSON cache, so ``ns_precision="auto"`` plans alike wherever the thread count is
    the same (the cache is keyed by it; processes that start together on an empty cache still
    probe on their own). Probed separately on a native-bf16 CPU at 2 threads, the bf16/fp32
    ratio was seen anywhere from 0.1 to 2.2 while other processes ran. Tests that compare runs
    across processes pin ``ns_precision`` as well. A test may point the variable elsewhere."""
    if os.environ.get("MUONCLIP_NS_RATES_CACHE"):
        yield
        return
    os.environ["MUONCLIP_NS_RATES_CACHE"] = str(tmp_path_factory.mktemp("ns_rates") / "rates.json")
    try:
        yield
    finally:
        os.environ.pop("MUONCLIP_NS_RATES_CACHE", None)


@pytest.fixture(autouse=True)
def _imitate_cpu_bf16_flags(monkeypatch):
    """``MUONCLIP_TEST_CPU_BF16_FLAGS=amx_bf16`` runs the suite as on a CPU with native bf16,
    where ``ns_precision="auto"`` picks bf16 (Sapphire Rapids, Zen 4): a test that assumes
    fp32 must say so. Unset, the real CPU flags apply."""
    flags = os.environ.get("MUONCLIP_TEST_CPU_BF16_FLAGS")
    if flags is not None:
        from muonclip.optim import precision

        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: tuple(f for f in flags.split(",") if f))
        # and auto measures bf16 faster, as such a CPU does (unless a test pins other rates)
        monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 300, "bf16": 1000}')
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _assert_same_optimizer_state(before: dict, after: dict) -> None:
    """Two optimizer state dicts hold the same tensors, bit for bit, under the same keys."""
    assert before["state"].keys() == after["state"].keys()
    for param_id, entries in before["state"].items():
        assert entries.keys() == after["state"][param_id].keys(), param_id
        for key, value in entries.items():
            assert torch.equal(value, after["state"][param_id][key]), (param_id, key)


@pytest.fixture
def assert_same_optimizer_state():
    return _assert_same_optimizer_state


class _TouchOnUnpickle:
    """Unpickling this runs ``Path(marker).touch()``: the stand-in for an attacker's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


@pytest.fixture
def touch_on_unpickle():
    """``touch_on_unpickle(marker)``: an object whose unpickling creates the file ``marker``."""
    return _TouchOnUnpickle


@pytest.fixture
def plant_pickle_payload():
    """``plant(path, marker, magic=b"MUONCLIP-CKPT-2\\n")`` replaces the checkpoint at ``path`` with
    what an attacker would share: a valid header and a matching sha256 around a torch.save
    archive whose unpickling touches ``marker``. Nothing here unpickles it."""
    import hashlib
    import io

    def plant(path: Path, marker: Path, magic: bytes = b"MUONCLIP-CKPT-2\n") -> Path:
        buf = io.BytesIO()
        torch.save({"step": 1, "model": {"w": torch.zeros(2)}, "payload": _TouchOnUnpickle(marker)}, buf)
        payload = buf.getvalue()
        Path(path).write_bytes(magic + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        return Path(path)
    return plant


class ToyLM(nn.Module):
    """A tiny LM-shaped module: embedding, two hidden matrices, a norm, a bias, a head."""

    def __init__(self, vocab: int = 17, d: int = 8, tie: bool = False, conv: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up = nn.Linear(d, 3 * d, bias=True)
        self.down = nn.Linear(3 * d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.conv = nn.Conv1d(d, d, 3, padding=1, bias=False) if conv else None
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)
        if self.conv is not None:
            h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.down(torch.relu(self.up(h)))
        return self.lm_head(self.norm(h))


@pytest.fixture
def toy_lm():
    return ToyLM


@pytest.fixture
def toy_batch():
    def make(vocab: int = 17, batch: int = 4, seq: int = 6):
        g = torch.Generator().manual_seed(1)
        return torch.randint(0, vocab, (batch, seq), generator=g)
    return make


# A short corpus keeps the lab's tiny runs fast and independent of the embedded corpus build.
CORPUS = ("The quick brown fox jumps over the lazy dog. " * 40 +
          "Muon orthogonalises momentum; QK-Clip rescales query and key weights. " * 40)


@pytest.fixture
def corpus_file(tmp_path):
    """:data:`CORPUS` written to a UTF-8 file (``data.source=`` of a tiny run)."""
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path
