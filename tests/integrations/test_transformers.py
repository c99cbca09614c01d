"""MuonClip on Hugging Face models: exact tracked max logits, exact QK-Clip, param groups, Trainer."""
from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import math
import os
import sys

import pytest
import torch

if not os.environ.get("CI"):
    pytest.importorskip("transformers")
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

import muonclip  # noqa: E402
from muonclip import MuonClip  # noqa: E402
from muonclip.integrations.transformers import (  # noqa: E402
    MuonClipCallback,
    enable_qk_clip,
    head_blocks_for,
    make_muonclip_optimizer,
    per_head_max_logits,
)
from muonclip.optim.reference import reference_muon_step  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is faster, and on a shared 2-core machine
    two spinning OpenMP threads made this module ~20x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


#: ``MUONCLIP_TEST_DEVICE=cuda`` runs the models and batches of this module on a GPU (the exactness
#: tests: ``-k "exact_qk_clip_training or tracked_matches_reference or flex"``); default cpu.
DEVICE = torch.device(os.environ.get("MUONCLIP_TEST_DEVICE", "cpu"))
FAMILIES = ("llama", "qwen2", "mistral", "deepseek_v3")
IMPLS = ("eager", "sdpa")
VOCAB, SEQ, BATCH = 128, 16, 3
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, initializer_range=0.1,
              attention_dropout=0.0)


def make_model(family: str, impl: str = "sdpa", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        cfg = LlamaConfig(**{**COMMON, "num_key_value_heads": 2, "tie_word_embeddings": False, **overrides})
        cls = LlamaForCausalLM
    elif family == "qwen2":  # q/k/v biases
        cfg = Qwen2Config(**{**COMMON, "num_key_value_heads": 2, "tie_word_embeddings": False, **overrides})
        cls = Qwen2ForCausalLM
    elif family == "mistral":  # sliding window shorter than the sequence: a non-causal-only mask
        cfg = MistralConfig(**{**COMMON, "num_key_value_heads": 2, "sliding_window": 6, **overrides})
        cls = MistralForCausalLM
    elif family == "deepseek_v3":  # MLA, interleaved rope, MoE in layer 1
        cfg = DeepseekV3Config(**{
            **COMMON, "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16,
            "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "moe_intermediate_size": 32,
            "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
            "first_k_dense_replace": 1, "n_shared_experts": 1, "rope_interleave": True, **overrides})
        cls = DeepseekV3ForCausalLM
    else:
        raise ValueError(family)
    model = cls._from_config(cfg, attn_implementation=impl)
    if family == "qwen2":  # HF initialises biases to zero; make them matter for the logits
        with torch.no_grad():
            for layer in model.model.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    lin.bias.normal_(0.0, 0.5)
    model.to(DEVICE)
    model.train()
    return model


def make_batch(seed: int = 1, pad: str = "right") -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    am = torch.ones(BATCH, SEQ, dtype=torch.long)
    if pad == "right":
        am[1, -4:] = 0
    elif pad == "left":
        am[1, :4] = 0
    labels = ids.masked_fill(am == 0, -100)
    return {"input_ids": ids.to(DEVICE), "attention_mask": am.to(DEVICE), "labels": labels.to(DEVICE)}


# ------------------------------------------------------------------------------------------
# Independent reference: capture post-RoPE q/k from the model's own modules, build the mask
# from the 2-D attention mask, the causal rule and the config's sliding window.
# ------------------------------------------------------------------------------------------
class Reference:
    """Captures each attention layer's post-RoPE q and k by wrapping the modeling file's
    rotary function (and, for MLA, forward hooks on q_b_proj/q_proj and kv_b_proj)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.cfg = model.config
        self.mla = self.cfg.model_type == "deepseek_v3"
        self.mod = sys.modules[type(model).__module__]
        self.attn = [layer.self_attn for layer in model.model.layers]
        self.rot: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.qlin: list[torch.Tensor] = []
        self.kvb: list[torch.Tensor] = []

    @contextlib.contextmanager
    def capture(self):
        self.rot, self.qlin, self.kvb = [], [], []
        saved = {}
        for fname in ("apply_rotary_pos_emb", "apply_rotary_pos_emb_interleave"):
            orig = getattr(self.mod, fname, None)
            if orig is None:
                continue
            saved[fname] = orig

            def wrapped(*a, _orig=orig, **k):
                q, kk = _orig(*a, **k)
                self.rot.append((q.detach().clone(), kk.detach().clone()))
                return q, kk
            setattr(self.mod, fname, wrapped)
        hooks = []
        if self.mla:
            for a in self.attn:
                q_lin = a.q_proj if a.q_lora_rank is None else a.q_b_proj
                hooks.append(q_lin.register_forward_hook(lambda m, i, o: self.qlin.append(o.detach().clone())))
                hooks.append(a.kv_b_proj.register_forward_hook(lambda m, i, o: self.kvb.append(o.detach().clone())))
        try:
            yield self
        finally:
            for fname, orig in saved.items():
                setattr(self.mod, fname, orig)
            for h in hooks:
                h.remove()

    @contextlib.contextmanager
    def record_inputs(self):
        """Keep every attention layer's call arguments, to :meth:`replay` them later."""
        self.inputs = []

        def keep(module, args, kwargs):
            clone = lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.inputs.append((module, tuple(clone(a) for a in args),
                                {k: tuple(clone(t) for t in v) if isinstance(v, tuple) else clone(v)
                                 for k, v in kwargs.items()}))
        hooks = [a.register_forward_pre_hook(keep, with_kwargs=True) for a in self.attn]
        try:
            yield self
        finally:
            for h in hooks:
                h.remove()

    @torch.no_grad()
    def replay(self, attention_mask) -> list[torch.Tensor]:
        """Max logits of every layer on the recorded layer inputs, with the current weights.
        (A full forward would feed clipped layer-0 outputs to layer 1, so only layer 0's
        logits would be comparable.)"""
        with self.capture():
            for module, args, kwargs in self.inputs[-len(self.attn):]:
                args, kwargs = without_kv_cache(module, args, kwargs)
                module(*args, **kwargs)
        return self.max_logits(attention_mask)

    def allowed(self, attention_mask: torch.Tensor | None, b: int, t: int) -> torch.Tensor:
        i = torch.arange(t, device=DEVICE)[:, None]
        j = torch.arange(t, device=DEVICE)[None, :]
        ok = (j <= i)[None].expand(b, t, t)
        window = getattr(self.cfg, "sliding_window", None)
        if window and getattr(self.cfg, "use_sliding_window", True) is not False:
            ok = ok & ((i - j) < window)[None]
        if attention_mask is not None:
            ok = ok & attention_mask.bool()[:, None, :]
        return ok  # (B, Tq, Tk)

    def max_logits(self, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Per layer, float64 ``max_{b,i,j allowed} scaling * q_i . k_j`` per head."""
        assert len(self.rot) == len(self.attn), (len(self.rot), len(self.attn))
        out = []
        for n, a in enumerate(self.attn):
            q_rot, k_rot = (x.double() for x in self.rot[n])
            b, h, t = q_rot.shape[:3]
            if self.mla:
                nope, vdim = a.qk_nope_head_dim, a.v_head_dim
                q_pass = self.qlin[n].double().view(b, t, h, -1)[..., :nope].transpose(1, 2)
                k_pass = self.kvb[n].double().view(b, t, h, nope + vdim)[..., :nope].transpose(1, 2)
                logits = q_pass @ k_pass.transpose(-1, -2) + q_rot @ k_rot.transpose(-1, -2)
            else:
                rep = h // k_rot.shape[1]
                k = k_rot.repeat_interleave(rep, dim=1)
                logits = q_rot @ k.transpose(-1, -2)
            logits = logits * a.scaling
            ok = self.allowed(attention_mask, b, t)[:, None]
            logits = logits.masked_fill(~ok, float("-inf"))
            out.append(logits.amax(dim=(0, 2, 3)))
        return out


#: Names an attention forward has taken its KV cache under: ``past_key_value`` (transformers
#: 4.x before 4.56), ``past_key_values`` (4.56 - 5.x) and ``cache`` (5.24+, which still accepts
#: ``past_key_values`` with a deprecation warning and then prefers ``cache``).
KV_CACHE_KWARGS = ("past_key_value", "past_key_values", "cache", "layer_past")


def without_kv_cache(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Recorded attention call arguments with the KV cache removed, for a stand-alone replay.

    A training forward may still build a cache (``use_cache`` defaults to True), and a recorded
    cache already holds this call's keys: replaying with it would attend to twice the keys. The
    cache parameter is found by the forward's own signature, not by transformers' version."""
    sig = inspect.signature(module.forward)
    bound = sig.bind(*args, **kwargs)
    named = {n for n, p in sig.parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    extra_name = next((n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    extra = dict(bound.arguments.pop(extra_name, {})) if extra_name else {}
    for name in KV_CACHE_KWARGS:
        if name in named:
            bound.arguments[name] = None
        extra.pop(name, None)  # never hand a cache on under another (deprecated) name
    extra["use_cache"] = False
    if "use_cache" in named:
        bound.arguments["use_cache"] = False
        del extra["use_cache"]
    assert not any(isinstance(v, transformers.Cache) for v in (*bound.arguments.values(), *extra.values()))
    return bound.args, {**bound.kwargs, **extra}


def assert_close_logits(tracked, ref, rtol=1e-5, atol=1e-6):
    assert len(tracked) == len(ref)
    for t, r in zip(tracked, ref, strict=True):
        torch.testing.assert_close(t.double(), r, rtol=rtol, atol=atol)


def mid_tau(logits) -> float:
    """A threshold halfway between the two middle heads: half the heads clipped, no ties."""
    v = (logits if isinstance(logits, torch.Tensor) else torch.cat(list(logits))).flatten().sort().values
    return float(v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def set_lr(opt, lr):
    old = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = lr
    return old


def q_rows_of_head(spec_layer, head):
    return [(b.param, b.rows(head)) for b in spec_layer.q + spec_layer.q_rope]


def exact_clip_check(model, opt, handle, ref, batch, tau):
    """With lr=0 (no update) the clip acts on exactly the logits it measured: afterwards every
    clipped head's max logit on the same batch is tau, every other head is bit-identical."""
    old_lr, old_tau = set_lr(opt, 0.0), opt.qk_clip_tau
    opt.qk_clip_tau = tau
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    with ref.capture(), ref.record_inputs():
        model(**batch).loss.backward()
    s = ref.max_logits(batch["attention_mask"])
    assert_close_logits(handle.max_logits(), s)
    opt.step()
    n_over = sum(int((x > tau).sum()) for x in s)
    assert n_over > 0 and opt.last_qk_clip.n_clipped == n_over
    with handle.paused():
        s_new = ref.replay(batch["attention_mask"])
    for old, new in zip(s, s_new, strict=True):
        for h in range(old.numel()):
            if old[h] > tau:
                assert new[h] <= tau * (1 + 1e-4)
                assert float(new[h]) == pytest.approx(tau, rel=1e-4)
            else:
                assert new[h] == old[h]  # weights of this head untouched: same logit bit for bit
    after = dict(model.named_parameters())
    spec = handle.spec()
    for layer, sl in enumerate(spec):
        for h in range(sl.n_head):
            for name, rows in q_rows_of_head(sl, h):
                same = torch.equal(before[name][rows], after[name][rows])
                assert same == bool(s[layer][h] <= tau), (name, h)
        for name in sl.shared_k:  # MLA shared rotary key (kv_a_proj_with_mqa): never touched
            assert torch.equal(before[name], after[name])
        if sl.grouped:  # exact GQA: shared k heads never scaled
            for b in sl.k:
                assert torch.equal(before[b.param], after[b.param])
    for g, lr in zip(opt.param_groups, old_lr, strict=True):
        g["lr"] = lr
    opt.qk_clip_tau = old_tau
    opt.zero_grad()
    return s


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_exact_qk_clip_training(family, impl):
    model = make_model(family, impl)
    batch = make_batch()
    ref = Reference(model)
    opt, handle = make_muonclip_optimizer(model, lr=0.05, weight_decay=0.0, qk_clip_tau=1e9)
    try:
        # initial logits: the exact clip on a median threshold (half the heads clipped)
        with handle.paused(), torch.no_grad(), ref.capture():
            model(**batch)
        s0 = torch.cat(ref.max_logits(batch["attention_mask"]))
        exact_clip_check(model, opt, handle, ref, batch, mid_tau(s0))

        # a few high-LR steps with tau = 0.5 x initial max: tracked == independent every step
        opt.qk_clip_tau = 0.5 * float(s0.max())
        clipped = 0
        for step in range(4):
            b = make_batch(seed=10 + step)
            opt.zero_grad()
            with ref.capture():
                model(**b).loss.backward()
            assert_close_logits(handle.max_logits(), ref.max_logits(b["attention_mask"]))
            opt.step()
            assert handle.observed_forwards == 0  # popped by the optimizer
            clipped += opt.last_qk_clip.n_clipped
        assert clipped > 0

        # after training: exact again, now with grown logits
        with handle.paused(), torch.no_grad(), ref.capture():
            model(**batch)
        s1 = torch.cat(ref.max_logits(batch["attention_mask"]))
        exact_clip_check(model, opt, handle, ref, batch, mid_tau(s1))
    finally:
        handle.remove()


@pytest.mark.parametrize("pad", ["left", "none"])
@pytest.mark.parametrize("impl", IMPLS)
def test_tracked_matches_reference_padding(impl, pad):
    for family in ("llama", "deepseek_v3"):
        model = make_model(family, impl)
        batch = make_batch(pad=pad)
        if pad == "none":
            batch = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
        ref = Reference(model)
        with enable_qk_clip(model) as handle, torch.no_grad(), ref.capture():
            model(**batch)
            assert_close_logits(handle.max_logits(), ref.max_logits(batch.get("attention_mask")))


def test_deepseek_v3_variants_q_proj_and_yarn_scaling():
    """q_lora_rank=None (q_proj), non-interleaved rope and yarn mscale (scaling != 1/sqrt(d))."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "mscale_all_dim": 1.0, "rope_theta": 10000.0,
            "original_max_position_embeddings": 16}
    key = "rope_parameters" if int(transformers.__version__.split(".")[0]) >= 5 else "rope_scaling"
    model = make_model("deepseek_v3", "eager", q_lora_rank=None, rope_interleave=False, **{key: yarn})
    attn = model.model.layers[0].self_attn
    assert attn.scaling != pytest.approx(attn.qk_head_dim ** -0.5)
    batch = make_batch()
    ref = Reference(model)
    opt, handle = make_muonclip_optimizer(model, lr=0.05, weight_decay=0.0)
    try:
        assert handle.spec()[0].q[0].param == "model.layers.0.self_attn.q_proj.weight"
        with handle.paused(), torch.no_grad(), ref.capture():
            model(**batch)
        s0 = torch.cat(ref.max_logits(batch["attention_mask"]))
        exact_clip_check(model, opt, handle, ref, batch, mid_tau(s0))
    finally:
        handle.remove()


def test_specs_name_the_models_parameters():
    llama = make_model("llama")
    with enable_qk_clip(llama) as h:
        s = h.spec()[1]
        assert (s.n_head, s.n_kv_head, s.layout) == (4, 2, "gqa")
        assert [b.param for b in s.q] == ["model.layers.1.self_attn.q_proj.weight"]
        assert [b.param for b in s.k] == ["model.layers.1.self_attn.k_proj.weight"]
        assert h.layer_names == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    qwen = make_model("qwen2")
    with enable_qk_clip(qwen) as h:
        s = h.spec()[0]
        prefix = "model.layers.0.self_attn"
        assert [b.param for b in s.q] == [f"{prefix}.q_proj.weight", f"{prefix}.q_proj.bias"]
        assert [b.param for b in s.k] == [f"{prefix}.k_proj.weight", f"{prefix}.k_proj.bias"]
    ds = make_model("deepseek_v3")
    with enable_qk_clip(ds) as h:
        s = h.spec()[0]
        a = ds.model.layers[0].self_attn
        qk, nope, v = a.qk_head_dim, a.qk_nope_head_dim, a.v_head_dim
        assert s.layout == "mla" and s.n_head == s.n_kv_head == 4
        q_b = "model.layers.0.self_attn.q_b_proj.weight"
        assert (s.q[0].param, s.q[0].width, s.q[0].offset, s.q[0].stride) == (q_b, nope, 0, qk)
        assert (s.q_rope[0].width, s.q_rope[0].offset, s.q_rope[0].stride) == (a.qk_rope_head_dim, nope, qk)
        kv_b = "model.layers.0.self_attn.kv_b_proj.weight"
        assert (s.k[0].param, s.k[0].width, s.k[0].stride) == (kv_b, nope, nope + v)
        assert s.shared_k == ("model.layers.0.self_attn.kv_a_proj_with_mqa.weight",)


def test_gradient_accumulation_eval_pause_and_remove():
    import transformers.models.llama.modeling_llama as ml

    orig_eager, orig_sdpa = ml.eager_attention_forward, ALL_ATTENTION_FUNCTIONS["sdpa"]
    model = make_model("llama", "sdpa")
    ref = Reference(model)
    handle = enable_qk_clip(model)
    assert model.config._attn_implementation == "muonclip_sdpa"  # the registered wrapper, by name
    assert ml.eager_attention_forward is orig_eager and ALL_ATTENTION_FUNCTIONS["sdpa"] is orig_sdpa  # none patched
    b1, b2 = make_batch(seed=3), make_batch(seed=4, pad="left")
    refs = []
    for b in (b1, b2):
        with ref.capture():
            model(**b).loss.backward()
        refs.append(ref.max_logits(b["attention_mask"]))
    assert handle.observed_forwards == 2
    assert_close_logits(handle.pop_max_logits(), [torch.maximum(x, y) for x, y in zip(*refs, strict=True)])
    with pytest.raises(RuntimeError, match="no max logits recorded"):
        handle.max_logits()
    model.eval()
    with torch.no_grad():
        model(**b1)
    model.train()
    with handle.paused(), torch.no_grad():
        model(**b1)
    assert handle.observed_forwards == 0
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_qk_clip(model)
    handle.remove()
    assert model.config._attn_implementation == "sdpa"
    assert ml.eager_attention_forward is orig_eager and ALL_ATTENTION_FUNCTIONS["sdpa"] is orig_sdpa
    handle.remove()  # idempotent
    assert model.config._attn_implementation == "sdpa"


def test_two_models_track_independently_and_restore():
    import transformers.models.llama.modeling_llama as ml

    orig = ml.eager_attention_forward
    m1, m2 = make_model("llama", "eager"), make_model("llama", "eager")
    h1, h2 = enable_qk_clip(m1), enable_qk_clip(m2)
    assert m1.config._attn_implementation == m2.config._attn_implementation == "muonclip_eager"
    b = make_batch()
    with torch.no_grad():
        m1(**b)
    assert h1.observed_forwards == 1 and h2.observed_forwards == 0
    h1.remove()
    assert m1.config._attn_implementation == "eager" and m2.config._attn_implementation == "muonclip_eager"
    with torch.no_grad():
        m2(**b)
    assert h2.observed_forwards == 1
    h2.remove()
    assert m2.config._attn_implementation == "eager"
    h3 = enable_qk_clip(m1)  # a dropped handle unregisters itself and restores the implementation
    assert m1.config._attn_implementation == "muonclip_eager"
    del h3
    gc.collect()
    assert m1.config._attn_implementation == "eager"
    enable_qk_clip(m1).remove()
    assert ml.eager_attention_forward is orig  # never patched


def test_models_sharing_a_config_keep_it_switched_until_the_last_handle():
    torch.manual_seed(0)
    cfg = LlamaConfig(**{**COMMON, "num_key_value_heads": 2})
    m1, m2 = LlamaForCausalLM(cfg).train(), LlamaForCausalLM(cfg).train()
    assert m1.config is m2.config is cfg and cfg._attn_implementation == "sdpa"  # transformers keeps the object
    b = make_batch()
    h1, h2 = enable_qk_clip(m1), enable_qk_clip(m2)
    assert cfg._attn_implementation == "muonclip_sdpa"
    with torch.no_grad():
        m1(**b), m2(**b)
    assert h1.observed_forwards == h2.observed_forwards == 1
    h1.remove()
    assert cfg._attn_implementation == "muonclip_sdpa"  # m2 still needs it
    with torch.no_grad():
        m1(**b), m2(**b)  # m1's layers are no longer tracked: straight through
    assert h2.observed_forwards == 2
    h2.remove()
    assert cfg._attn_implementation == "sdpa"


@pytest.mark.parametrize("impl", IMPLS)
def test_tracked_implementations_return_the_original_outputs(impl):
    """muonclip_<impl> delegates to <impl> with the same mask: outputs bit for bit."""
    for family in ("mistral", "deepseek_v3"):
        model = make_model(family, impl)
        batch = make_batch(pad="left")
        with torch.no_grad():
            want = model(**batch).logits
            with enable_qk_clip(model) as handle:
                assert model.config._attn_implementation == f"muonclip_{impl}"
                assert f"muonclip_{impl}" in transformers.AttentionInterface()
                assert f"muonclip_{impl}" in transformers.AttentionMaskInterface()
                got = model(**batch).logits
                assert handle.observed_forwards == 1
            assert model.config._attn_implementation == impl
            again = model(**batch).logits
        assert torch.equal(got, want) and torch.equal(again, want)


def test_switch_uses_set_attn_implementation():
    model = make_model("llama", "eager")
    calls, setter = [], model.set_attn_implementation

    def spy(impl, *args, **kwargs):
        calls.append(impl)
        return setter(impl, *args, **kwargs)

    model.set_attn_implementation = spy
    with enable_qk_clip(model):
        assert calls == [{"": "muonclip_eager"}]
    assert calls == [{"": "muonclip_eager"}, {"": "eager"}] and model.config._attn_implementation == "eager"


@pytest.mark.parametrize("family,impl", [("llama", "sdpa"), ("deepseek_v3", "eager")])
def test_switch_without_set_attn_implementation_sets_the_config(family, impl, monkeypatch):
    """A model without the public setter gets config._attn_implementation set directly."""
    model = make_model(family, impl)
    monkeypatch.delattr(transformers.PreTrainedModel, "set_attn_implementation")
    assert not hasattr(model, "set_attn_implementation")
    batch = make_batch()
    ref = Reference(model)
    with enable_qk_clip(model) as handle, torch.no_grad(), ref.capture():
        assert model.config._attn_implementation == f"muonclip_{impl}"
        model(**batch)
        assert_close_logits(handle.max_logits(), ref.max_logits(batch["attention_mask"]))
    assert model.config._attn_implementation == impl


def test_implementation_switched_by_the_user_stops_tracking_and_is_kept():
    model = make_model("llama", "sdpa")
    handle = enable_qk_clip(model)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        model(**make_batch())
    with pytest.raises(RuntimeError, match="no max logits recorded"):
        handle.max_logits()
    handle.remove()
    assert model.config._attn_implementation == "eager"


@pytest.mark.slow  # torch.compile of flex attention and its block mask: ~40 s on 2 cores
def test_flex_attention_forward_tracked():
    """flex_attention has no CPU backward in torch 2.13, so only a training-mode forward."""
    model = make_model("mistral", "flex_attention")
    batch = make_batch()
    ref = Reference(model)
    with enable_qk_clip(model) as handle, torch.no_grad(), ref.capture():
        try:
            model(**batch)
        except Exception as exc:  # pragma: no cover - depends on the torch build
            pytest.skip(f"flex_attention does not run here: {exc!r}"[:200])
        assert_close_logits(handle.max_logits(), ref.max_logits(batch["attention_mask"]))


def test_per_head_max_logits_chunking_matches_dense():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 9, 5, generator=g), torch.randn(2, 3, 9, 5, generator=g)
    dense = (q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 0.3).masked_fill(
        ~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf")).amax(dim=(0, 2, 3))
    for max_elements in (1, 50, 10_000):
        torch.testing.assert_close(per_head_max_logits(q, k, 0.3, causal=True, max_elements=max_elements), dense)


def test_wrapper_reads_positional_scaling_and_float_masks():
    import transformers.models.llama.modeling_llama as ml

    model = make_model("llama", "eager")
    attn = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 4, 7, 16, generator=g), torch.randn(2, 2, 7, 16, generator=g)
    future = ~torch.ones(7, 7, dtype=torch.bool).tril()
    mask = torch.zeros(2, 1, 7, 7).masked_fill(future, torch.finfo(torch.float32).min)
    with enable_qk_clip(model) as handle:
        tracked = ALL_ATTENTION_FUNCTIONS["muonclip_eager"]  # the registered wrapper, delegating to ml's eager
        out, _ = tracked(attn, q, k, k, mask, 0.5)  # scaling passed positionally
        got = handle._trackers[0].value
    torch.testing.assert_close(out, ml.eager_attention_forward(attn, q, k, k, mask, 0.5)[0], rtol=0, atol=0)
    want = per_head_max_logits(q, k, 0.5, causal=True)
    torch.testing.assert_close(got, want)


def test_unsupported_models_are_refused():
    model = make_model("llama", "sdpa")
    model.config.model_type = "llama_like"
    with pytest.raises(ValueError, match="allow_untested"):
        enable_qk_clip(model)
    enable_qk_clip(model, allow_untested=True).remove()
    model.config.model_type = "llama"
    model.model.layers[0].self_attn.q_norm = torch.nn.LayerNorm(16)
    with pytest.raises(NotImplementedError, match="q_norm"):
        enable_qk_clip(model)
    del model.model.layers[0].self_attn.q_norm
    model.config._attn_implementation = "flash_attention_2"  # set directly: flash-attn needs a GPU
    with pytest.raises(ValueError, match="not supported"):
        enable_qk_clip(model)
    assert model.config._attn_implementation == "flash_attention_2"


def test_frozen_attention_layers_are_left_out_of_qk_clip():
    """Partial fine-tuning: a frozen layer's q/k are neither tracked nor clipped (the optimizer
    does not hold them; building it used to fail with "spec names parameters the optimizer does
    not hold"), the trainable layers clip as usual, and a layer with only k frozen is refused."""
    model = make_model("llama", "sdpa")
    model.model.layers[0].requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.model.layers[0].named_parameters()}
    opt, handle = make_muonclip_optimizer(model, lr=0.0, weight_decay=0.0, qk_clip_tau=1e9)
    try:
        assert handle.layer_names == ["model.layers.1.self_attn"]
        batch = make_batch()
        model(**batch).loss.backward()
        (logits,) = handle.max_logits()
        opt.qk_clip_tau = 0.5 * float(logits.max())
        opt.step()
        assert opt.last_qk_clip.n_clipped > 0
        assert all(torch.equal(p, frozen[n]) for n, p in model.model.layers[0].named_parameters())
    finally:
        handle.remove()
    model = make_model("llama", "sdpa")
    model.model.layers[0].self_attn.k_proj.requires_grad_(False)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn: \['model.layers.0.self_attn.k_proj.weight'\]"):
        make_muonclip_optimizer(model, lr=1e-3)


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            intermediate_size=64, vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _hf(model_class: str, config_class: str, **overrides):
    """A tiny transformers model by class name, or a skip when this transformers lacks it."""
    model_cls, config_cls = getattr(transformers, model_class, None), getattr(transformers, config_class, None)
    if model_cls is None or config_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {model_class}")
    return model_cls(config_cls(**{**TINY, **overrides}))


@pytest.mark.parametrize("model_class,config_class,overrides,match", [
    ("Llama4ForCausalLM", "Llama4TextConfig",
     dict(intermediate_size_mlp=64, num_local_experts=2, use_qk_norm=True, no_rope_layers=[1, 1]), "qk_norm"),
    ("HunYuanDenseV1ForCausalLM", "HunYuanDenseV1Config", {}, "query_layernorm"),
    ("OlmoForCausalLM", "OlmoConfig", dict(clip_qkv=0.5), "clip_qkv"),
])
def test_q_k_changed_after_the_projection_is_refused(model_class, config_class, overrides, match):
    """Llama 4's qk_norm, HunYuan's query_layernorm and OLMo's clip_qkv act on q/k after
    q_proj/k_proj, so scaling those rows does not cap the logit: QK-Clip reported heads clipped
    while their logits stayed up to 11% above tau. They are refused, like Qwen3's q_norm."""
    model = _hf(model_class, config_class, **overrides)
    with pytest.raises(NotImplementedError, match=match):
        enable_qk_clip(model, allow_untested=True)


def test_eager_tracking_delegates_to_the_function_the_module_calls():
    """Llama 4's vision attention calls vision_eager_attention_forward, not its file's
    eager_attention_forward (the text one, which failed on its scaling=None): the tracked forward
    must delegate to the function the module calls and return the same output, bit for bit."""
    ml4 = pytest.importorskip("transformers.models.llama4.modeling_llama4")
    from muonclip.integrations.transformers.registration import original_attention

    cfg = transformers.Llama4VisionConfig(
        hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, image_size=16,
        patch_size=8, vision_output_dim=32, projector_input_dim=32, projector_output_dim=32, pixel_shuffle_ratio=0.5)
    model = transformers.Llama4VisionModel._from_config(cfg, attn_implementation="eager").train()
    attention = next(m for m in model.modules() if isinstance(m, ml4.Llama4VisionAttention))
    assert original_attention(attention, "eager") is ml4.vision_eager_attention_forward
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    untracked = model(pixels).last_hidden_state
    with enable_qk_clip(model, allow_untested=True) as handle:
        tracked = model(pixels).last_hidden_state
        (logits,) = handle.max_logits()
    assert torch.equal(tracked, untracked)
    assert logits.shape == (4,) and torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_route_hf_llama(tie):
    model = make_model("llama", tie_word_embeddings=tie)
    groups = {g["algorithm"]: g for g in muonclip.param_groups(model, lr=0.01, weight_decay=0.0)}
    muon, adamw = set(groups["muon"]["param_names"]), set(groups["adamw"]["param_names"])
    assert "model.embed_tokens.weight" in adamw
    assert not any("embed" in n or "lm_head" in n for n in muon)
    if tie:
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert "lm_head.weight" not in muon | adamw
    else:
        assert "lm_head.weight" in adamw
    assert all(n.endswith("_proj.weight") for n in muon)
    assert len(muon) == 2 * 7
    assert all("norm" in n for n in adamw - {"model.embed_tokens.weight", "lm_head.weight"})
    ids = {id(p) for g in groups.values() for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}


def test_param_groups_route_qwen2_biases_and_deepseek_experts():
    qwen = make_model("qwen2")
    g = {x["algorithm"]: set(x["param_names"]) for x in muonclip.param_groups(qwen)}
    assert "model.layers.0.self_attn.q_proj.bias" in g["adamw"]
    assert "model.layers.0.self_attn.q_proj.weight" in g["muon"]
    ds = make_model("deepseek_v3")
    g = {x["algorithm"]: set(x["param_names"]) for x in muonclip.param_groups(ds)}
    experts = [n for n, p in ds.named_parameters() if ".experts." in n and p.ndim >= 2]
    assert experts and set(experts) <= g["muon"]  # transformers 5: 3-D stacks, orthogonalised per expert
    assert "model.layers.0.self_attn.kv_a_proj_with_mqa.weight" in g["muon"]
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= g["adamw"]


def test_callback_applies_clip_for_other_optimizers():
    model = make_model("qwen2", "eager")
    batch = make_batch()
    ref = Reference(model)
    handle = enable_qk_clip(model)
    try:
        with ref.capture(), ref.record_inputs():
            model(**batch).loss.backward()
        s = ref.max_logits(batch["attention_mask"])
        tau = mid_tau(s)
        opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # no update: the clip alone
        opt.step()
        cb = MuonClipCallback(handle, tau=tau)
        cb.on_optimizer_step(None, None, None, optimizer=opt)
        with handle.paused():
            s_new = ref.replay(batch["attention_mask"])
        for old, new in zip(s, s_new, strict=True):
            assert bool((new <= tau * (1 + 1e-4)).all())
            torch.testing.assert_close(new, torch.minimum(old, torch.tensor(tau, dtype=old.dtype)), rtol=1e-4, atol=0)
        assert cb._pending.n_clipped == sum(int((x > tau).sum()) for x in s)
        with pytest.raises(ValueError, match="already applies"):
            opt2 = MuonClip(muonclip.param_groups(model), qk_clip_tau=1.0, qk_clip_spec=handle.spec(),
                            max_logits_fn=handle.pop_max_logits)
            cb.on_train_begin(None, None, None, optimizer=opt2)
    finally:
        handle.remove()


def test_trainer_20_steps_loss_decreases(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = make_model("llama", "sdpa", initializer_range=0.02)
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, VOCAB, (4, SEQ), generator=g)
    data = [{"input_ids": seqs[i % 4], "labels": seqs[i % 4]} for i in range(64)]
    opt, handle = make_muonclip_optimizer(model, lr=0.02, weight_decay=0.0, qk_clip_tau=1e9)
    with torch.no_grad():
        model(input_ids=seqs[:2])
    opt.qk_clip_tau = 0.5 * float(torch.cat(handle.pop_max_logits()).max())  # clipping fires
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        lr_scheduler_type="constant", dataloader_num_workers=0, seed=0,
    )
    cb = MuonClipCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None), callbacks=[cb])
    try:
        trainer.train()
    finally:
        handle.remove()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 20
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert len(cb.history) == 20 and sum(h["n_clipped"] for h in cb.history) > 0
    assert any("qk_clip_max_logit" in e for e in trainer.state.log_history)


# -- per-head Muon ----------------------------------------------------------------------------
def _attn_layout(model):
    """``(module prefix, {projection: (dim, head width, heads)})`` per attention layer, from the config."""
    cfg = model.config
    out = []
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        if cfg.model_type == "deepseek_v3":
            h, nope = cfg.num_attention_heads, cfg.qk_nope_head_dim
            q = "q_proj" if cfg.q_lora_rank is None else "q_b_proj"
            rows = {q: (0, nope + cfg.qk_rope_head_dim, h), "kv_b_proj": (0, nope + cfg.v_head_dim, h)}
            rows["o_proj"] = (1, cfg.v_head_dim, h)
        else:
            hd, h, kv = a.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
            rows = {"q_proj": (0, hd, h), "k_proj": (0, hd, kv), "v_proj": (0, hd, kv), "o_proj": (1, hd, h)}
        out.append((f"model.layers.{i}.self_attn", rows))
    return out


PER_HEAD_CASES = [("llama", {}), ("llama", {"head_dim": 8}), ("qwen2", {}), ("mistral", {}),
                  ("deepseek_v3", {}), ("deepseek_v3", {"q_lora_rank": None, "v_head_dim": 6})]


@pytest.mark.parametrize("family,overrides", PER_HEAD_CASES)
@pytest.mark.parametrize("include_output", [False, True])
def test_head_blocks_for_tiles_each_weight_by_heads(family, overrides, include_output):
    """q heads for q, KV heads for GQA k/v, [nope | rope] and [k_nope | v] widths for MLA; each
    width tiles its weight exactly; every name is a Muon parameter."""
    model = make_model(family, **overrides)
    layout = head_blocks_for(model, include_output)
    params = dict(model.named_parameters())
    expected = {}
    for prefix, rows in _attn_layout(model):
        for proj, (dim, width, heads) in rows.items():
            if proj != "o_proj" or include_output:
                expected[f"{prefix}.{proj}.weight"] = (dim, width)
            if proj in ("k_proj", "v_proj"):
                assert heads == model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
            w = params[f"{prefix}.{proj}.weight"]
            assert w.shape[dim] % width == 0 and w.shape[dim] // width == heads, (proj, tuple(w.shape), width)
    assert layout == expected
    muon = next(g for g in muonclip.param_groups(model, head_blocks=layout) if g["algorithm"] == "muon")
    assert sum(b is not None for b in muon["head_blocks"]) == len(layout)


@pytest.mark.parametrize("family", ["llama", "qwen2", "deepseek_v3"])
def test_head_blocks_agree_with_the_qk_clip_spec(family):
    """Both come from one per-module layout: the spec's per-head q/k strides are the head widths."""
    model = make_model(family)
    layout = head_blocks_for(model)
    with enable_qk_clip(model) as h:
        for spec in h.spec():
            for block in spec.q + spec.k + spec.q_rope:
                if block.param.endswith(".weight"):
                    stride = block.width if block.stride is None else block.stride
                    assert layout[block.param] == (0, stride)


def test_head_blocks_for_lists_only_muon_parameters():
    model = make_model("llama")
    rules = [muonclip.optim.Rule(r"\.q_proj\.weight$", "adamw")]
    layout = head_blocks_for(model, rules=rules)
    assert layout and not any(".q_proj." in n for n in layout)
    opt, handle = make_muonclip_optimizer(model, lr=0.02, qk_clip_tau=None, rules=rules, per_head_muon=1)
    assert handle is None
    muon = next(g for g in opt.param_groups if g["algorithm"] == "muon")
    assert {n for n, b in zip(muon["param_names"], muon["head_blocks"], strict=True) if b} == set(layout)


def test_head_blocks_for_refuses_unsupported_models():
    model = make_model("llama")
    model.config.model_type = "llama_like"
    with pytest.raises(ValueError, match=r"not one of the tested .*'llama', 'mistral', 'qwen2', 'deepseek_v3'"):
        head_blocks_for(model)
    with pytest.raises(ValueError, match="allow_untested"):
        make_muonclip_optimizer(model, lr=0.02, qk_clip_tau=None, per_head_muon=1)
    assert head_blocks_for(model, allow_untested=True) == head_blocks_for(make_model("llama"))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=VOCAB))
    with pytest.raises(ValueError, match="tested"):
        head_blocks_for(gpt2)
    with pytest.raises(ValueError, match="no attention modules with a known head layout in GPT2LMHeadModel"):
        head_blocks_for(gpt2, allow_untested=True)


def test_head_blocks_for_finds_phis_dense_output_or_says_it_found_none():
    """Phi names its output projection ``dense``: include_output splits it per head (it was left
    out silently); an attention with no output projection at all is refused, not skipped."""
    phi = _hf("PhiForCausalLM", "PhiConfig")
    blocks = head_blocks_for(phi, include_output=True, allow_untested=True)
    assert blocks["model.layers.0.self_attn.dense.weight"] == (1, 8)
    model = make_model("llama")
    del model.model.layers[1].self_attn.o_proj
    with pytest.raises(ValueError, match="model.layers.1.self_attn: found no output projection"):
        head_blocks_for(model, include_output=True)
    assert "model.layers.0.self_attn.q_proj.weight" in head_blocks_for(model)


@pytest.mark.parametrize("kwargs,match", [
    ({"per_head_muon": -1}, "per_head_muon"), ({"per_head_muon": True}, "per_head_muon"),
    ({"per_head_output": True}, "needs per_head_muon"),
    ({"per_head_muon": 2, "heads_per_block": 2}, "not heads_per_block"),
])
def test_per_head_muon_option_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_muonclip_optimizer(make_model("llama"), lr=0.02, qk_clip_tau=None, **kwargs)


def test_per_head_muon_is_off_by_default():
    opt, handle = make_muonclip_optimizer(make_model("llama"), lr=0.02, qk_clip_tau=None)
    muon = next(g for g in opt.param_groups if g["algorithm"] == "muon")
    assert "head_blocks" not in muon and muon["heads_per_block"] == 1


def _slices(w, dim, width):
    return [w[i:i + width] if dim == 0 else w[:, i:i + width] for i in range(0, w.shape[dim], width)]


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
@pytest.mark.parametrize("g", [1, 2])
def test_per_head_muon_step_orthogonalises_each_head_block(family, g):
    """One step equals a float64 Muon step on each block of g heads cut out by slicing (KV
    projections with fewer heads than g are one block); other matrices stay whole."""
    model = make_model(family)
    lr, wd = 0.02, 0.1
    opt, handle = make_muonclip_optimizer(model, lr=lr, weight_decay=wd, qk_clip_tau=None, per_head_muon=g,
                                          per_head_output=True, ns_precision="fp32")
    layout = head_blocks_for(model, include_output=True)
    model(**make_batch()).loss.backward()
    muon = next(grp for grp in opt.param_groups if grp["algorithm"] == "muon")
    # the float64 reference runs on the CPU, wherever the model is (MUONCLIP_TEST_DEVICE)
    before = {n: (p.detach().cpu().clone(), p.grad.cpu().clone()) for n, p in zip(muon["param_names"], muon["params"],
                                                                                    strict=True)}
    opt.step()
    params = dict(model.named_parameters())
    for name, (w0, grad) in before.items():
        if w0.ndim != 2:
            continue  # MoE expert stacks: covered by the optimizer's own tests
        buf = torch.zeros_like(grad, dtype=torch.float64)
        expected = torch.empty_like(w0, dtype=torch.float64)
        if name in layout:
            dim, width = layout[name]
            block = width * min(g, w0.shape[dim] // width)
            for out, w, gr in zip(_slices(expected, dim, block), _slices(w0, dim, block), _slices(grad, dim, block),
                                  strict=True):
                out.copy_(reference_muon_step(w, gr, buf[:w.shape[0], :w.shape[1]], lr=lr, weight_decay=wd)[0])
            if block < w0.shape[dim]:  # a real split changes the update
                whole = reference_muon_step(w0, grad, buf, lr=lr, weight_decay=wd)[0]
                assert (whole - expected).abs().max() > 1e-3, name
        else:
            expected = reference_muon_step(w0, grad, buf, lr=lr, weight_decay=wd)[0]
        torch.testing.assert_close(params[name].detach().cpu().double(), expected, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["qwen2", "deepseek_v3"])
def test_per_head_muon_state_dict_round_trip(family):
    """Per-head groups (and QK-Clip) continue bit-exactly from a saved state_dict."""
    def build():
        model = make_model(family)
        return (model, *make_muonclip_optimizer(model, lr=0.02, per_head_muon=2, per_head_output=True,
                                                ns_precision="fp32"))

    def train(model, opt, seeds):
        for seed in seeds:
            opt.zero_grad(set_to_none=True)
            model(**make_batch(seed)).loss.backward()
            opt.step()

    model, opt, handle = build()
    model2, opt2, handle2 = build()
    try:
        train(model, opt, [1, 2])
        saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
        train(model, opt, [3, 4])
        model2.load_state_dict(saved_model)
        opt2.param_groups[0]["heads_per_block"] = 1  # load_state_dict must restore it
        opt2.load_state_dict(saved_opt)
        muon = next(grp for grp in opt2.param_groups if grp["algorithm"] == "muon")
        assert muon["heads_per_block"] == 2 and sum(b is not None for b in muon["head_blocks"]) > 0
        train(model2, opt2, [3, 4])
        for (n, a), b in zip(model.named_parameters(), model2.parameters(), strict=True):
            assert torch.equal(a, b), n
    finally:
        handle.remove()
        handle2.remove()
