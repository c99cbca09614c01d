"""The reproduction's runs do not depend on the CPU they train on."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from muonclip.lab.presets import get_preset
from muonclip.lab.train import build_model, build_optimizer
from muonclip.optim import precision
from muonclip.optim.precision import resolve_ns_dtype
from muonclip.reproduce import tradeoff
from muonclip.reproduce.presets import PRESET_NAMES
from muonclip.sae import DEFAULT as SAE_DEFAULT
from muonclip.sae.train import build_sae, build_sae_optimizer


@pytest.fixture
def native_bf16_cpu(monkeypatch):
    """A CPU where ns_precision="auto" means bf16 (AMX, no ISA cap)."""
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("amx_bf16",))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("MUONCLIP_NS_RATES", '{"fp32": 300, "bf16": 1000}')  # auto's measured rates there
    assert resolve_ns_dtype("auto", "cpu") == torch.bfloat16


def _muon_dtypes(optimizer: torch.optim.Optimizer) -> set[torch.dtype]:
    return {resolve_ns_dtype(group["ns_precision"], "cpu") for group in optimizer.param_groups
            if group["algorithm"] == "muon"}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_reproduction_preset_runs_newton_schulz_in_fp32_on_a_native_bf16_cpu(native_bf16_cpu, name):
    """docs/results.md was measured with fp32 Newton-Schulz; bf16 (what auto picks on such a CPU)
    moves the guardrail's Muon peak from 2.001 to 1.937 tau, so the presets pin fp32."""
    cfg = get_preset(name)
    for optimizer in ("muon", "muonclip"):
        opt = build_optimizer(build_model(cfg), cfg.replace(optim=dataclasses.replace(cfg.optim, optimizer=optimizer)))
        assert _muon_dtypes(opt) == {torch.float32}, (name, optimizer)


def test_sae_and_tradeoff_optimizers_run_newton_schulz_in_fp32_on_a_native_bf16_cpu(native_bf16_cpu):
    sae_cfg = SAE_DEFAULT.replace(optimizer="muon")
    assert _muon_dtypes(build_sae_optimizer(build_sae(sae_cfg, 16), sae_cfg)) == {torch.float32}
    for clip in (False, True):
        _, opt = tradeoff._build(tradeoff.QUICK, clip)
        assert _muon_dtypes(opt) == {torch.float32}


def test_every_story_preset_states_its_tau_rule_and_the_guardrail_follows_its_own():
    """tau comes from a rule stated in the preset module (issue #26), printed by both pages."""
    from muonclip.lab import get_preset
    from muonclip.reproduce import presets

    presets.register_presets()
    for name in ("dragon", "guardrail", "lifecycle", "efficiency"):
        rule = presets.TAU_RULES[name]
        assert rule.startswith(f"tau {get_preset(name).optim.qk_clip_tau:g}"), (name, rule)
    # guardrail: the stated multiple of the median of AdamW's measured peaks
    median = sorted(presets.GUARDRAIL_ADAMW_PEAKS)[len(presets.GUARDRAIL_ADAMW_PEAKS) // 2]
    assert presets.GUARDRAIL_TAU == round(presets.GUARDRAIL_TAU_OVER_ADAMW * median, 1)
    assert get_preset("guardrail").optim.qk_clip_tau == presets.GUARDRAIL_TAU
