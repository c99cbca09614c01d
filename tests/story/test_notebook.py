"""notebooks/muonclip_story.ipynb: its own Newton-Schulz and QK-Clip agree with the package
(float64, to 1e-6), it runs top to bottom (quick mode) with nbclient, and it is committed
executed, with its outputs.

The story chapters reuse the session's quick story (same output and cache folders), so
executing the notebook only re-reads those runs and figures.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muonclip.optim.functional import newton_schulz
from muonclip.optim.qk_clip import QKClipLayerSpec, RowBlock, apply_qk_clip_
from muonclip.optim.reference import reference_orthogonalize
from muonclip.story.notebook import NOTEBOOK, execute_notebook

# The first test to use the shared quick story pays for training it.
pytestmark = pytest.mark.timeout(1200)

TOL = 1e-6


@pytest.fixture(scope="module")
def math_cells():
    """The notebook's own math: its cells tagged ``math`` run in one namespace (they check
    themselves against the package as they run)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "math" in c.metadata.get("tags", [])]
    assert len(cells) >= 6
    ns: dict = {}
    for i, cell in enumerate(cells):
        exec(compile(cell.source, f"<notebook math cell {i}>", "exec"), ns)  # noqa: S102 (our own notebook)
    return ns


def _matrix(seed: int, n: int, m: int) -> torch.Tensor:
    return torch.randn(n, m, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 24), m=st.integers(1, 24), steps=st.integers(1, 8))
def test_notebook_newton_schulz_is_the_packages(math_cells, seed, n, m, steps):
    G = _matrix(seed, n, m)
    mine = math_cells["newton_schulz5"](G, steps)
    assert len(mine) == steps + 1
    package = newton_schulz(G, steps=steps, dtype=torch.float64)
    assert (mine[-1] - package).abs().max().item() < TOL
    assert (mine[-1] - reference_orthogonalize(G, "ns5", steps)).abs().max().item() < TOL


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 16), steps=st.integers(1, 6))
def test_notebook_scalar_map_moves_each_singular_value(math_cells, seed, n, steps):
    """svdvals(X_k) = p^k(svdvals(X_0)): what the notebook's 64x64 picture shows."""
    iterates = math_cells["newton_schulz5"](_matrix(seed, n, n), steps)
    sigma = torch.linalg.svdvals(iterates[0])
    for X in iterates[1:]:
        sigma = math_cells["p"](sigma)
        assert torch.allclose(torch.linalg.svdvals(X), sigma.sort(descending=True).values, atol=TOL)


def _heads(rows: int, n_head: int, seed: int, scales) -> torch.Tensor:
    w = _matrix(seed, rows * n_head, 32)
    return w * torch.tensor(scales, dtype=torch.float64).repeat_interleave(rows)[:, None]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.05, 1.0), tau=st.floats(0.5, 20.0))
def test_notebook_qk_clip_one_head_is_the_packages(math_cells, seed, scale, tau):
    d_head = math_cells["d_head"]
    W_q, W_k = scale * _matrix(seed, d_head, 32), scale * _matrix(seed + 1, d_head, 32)
    q2, k2, S, gamma = math_cells["qk_clip_one_head"](W_q, W_k, tau)
    assert gamma == (tau / S if S > tau else 1.0)
    params = {"q": W_q.clone(), "k": W_k.clone()}
    spec = [QKClipLayerSpec(1, 1, q=(RowBlock("q", d_head),), k=(RowBlock("k", d_head),))]
    apply_qk_clip_(params, spec, [torch.tensor([S], dtype=torch.float64)], tau)
    assert (params["q"] - q2).abs().max().item() < TOL and (params["k"] - k2).abs().max().item() < TOL
    assert math.isclose(math_cells["logits"](q2, k2).max().item(), min(S, tau), rel_tol=TOL)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scales=st.lists(st.floats(0.02, 1.0), min_size=4, max_size=4),
       tau=st.floats(0.5, 20.0))
def test_notebook_gqa_and_mla_clips_are_the_packages(math_cells, seed, scales, tau):
    ns = math_cells
    d_head, n_head, d_c, d_r = ns["d_head"], ns["n_head"], ns["d_c"], ns["d_r"]
    # GQA: the shared key is never scaled; every query head takes its own gamma
    W_q, W_k = _heads(d_head, n_head, seed, scales), 0.5 * _matrix(seed + 1, d_head, 32)
    q2, k2, S, _ = ns["gqa_clip"](W_q, W_k, tau)
    params = {"q": W_q.clone(), "k": W_k.clone()}
    spec = [QKClipLayerSpec(n_head, 1, q=(RowBlock("q", d_head),), k=(RowBlock("k", d_head),))]
    apply_qk_clip_(params, spec, [torch.tensor(S, dtype=torch.float64)], tau, gqa_mode="exact")
    assert torch.equal(k2, W_k) and torch.equal(params["k"], W_k)
    assert (params["q"] - q2).abs().max().item() < TOL
    # MLA: q^C, k^C by sqrt(gamma), q^R by gamma, the shared rotary key untouched
    Wqc, Wkc = _heads(d_c, n_head, seed + 2, scales), _heads(d_c, n_head, seed + 3, scales)
    Wqr, Wkr = _heads(d_r, n_head, seed + 4, scales), 0.5 * _matrix(seed + 5, d_r, 32)
    qc2, kc2, qr2, kr2, S, _ = ns["mla_clip"](Wqc, Wkc, Wqr, Wkr, tau)
    params = {"q_c": Wqc.clone(), "k_c": Wkc.clone(), "q_r": Wqr.clone(), "k_r": Wkr.clone()}
    spec = [QKClipLayerSpec(n_head, n_head, q=(RowBlock("q_c", d_c),), k=(RowBlock("k_c", d_c),),
                            q_rope=(RowBlock("q_r", d_r),), shared_k=("k_r",), layout="mla")]
    apply_qk_clip_(params, spec, [torch.tensor(S, dtype=torch.float64)], tau)
    assert torch.equal(kr2, Wkr) and torch.equal(params["k_r"], Wkr)
    for name, mine in (("q_c", qc2), ("k_c", kc2), ("q_r", qr2)):
        assert (params[name] - mine).abs().max().item() < TOL, name


def test_notebook_math_would_catch_a_wrong_formula(math_cells):
    """The comparison can fail: with the textbook cubic's coefficients the notebook's own
    Newton-Schulz cell stops agreeing with the package's quintic (and says so)."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = next(c.source for c in nb.cells if "def newton_schulz5" in c.source)
    assert "a, b, c = 3.4445, -4.7750, 2.0315" in source
    ns: dict = {}
    exec(source.replace("a, b, c = 3.4445, -4.7750, 2.0315", "a, b, c = 1.5, -0.5, 0.0"), ns)  # noqa: S102
    G = _matrix(0, 12, 20)
    assert (ns["newton_schulz5"](G, 5)[-1] - newton_schulz(G, steps=5, dtype=torch.float64)).abs().max() > 1e-2
    assert (math_cells["newton_schulz5"](G, 5)[-1] - newton_schulz(G, steps=5, dtype=torch.float64)).abs().max() < TOL


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _check_executed(nb) -> None:
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), "every code cell runs once, top to bottom"
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    drawing = [c for c in code if "sliders(" in c.source]
    assert len(drawing) >= 4
    for cell in drawing:  # static figures without widgets: every lesson's figure is in the notebook
        assert [o for o in cell.outputs if "image/png" in o.get("data", {})], cell.source[:80]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if o.get("output_type") == "display_data")
    assert html.count("<img") >= 10, "the chapters should show the figures"
    assert "data:image/gif;base64," in html
    text = "".join(str(o.get("text", "")) for o in outputs)
    assert "largest difference from muonclip" in text and "peak max logit" in text
    assert [o for o in outputs if "report.html" in str(o.get("text", ""))], "the notebook prints where the report is"


def test_notebook_executes_in_quick_mode(quick_story, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _, out, cache = quick_story
    monkeypatch.setenv("MUONCLIP_STORY_OUT", str(out))
    monkeypatch.setenv("MUONCLIP_STORY_CACHE", str(cache))
    nb = execute_notebook(NOTEBOOK, quick=True, write=False)
    _check_executed(nb)


def test_notebook_is_committed_executed():
    """`make notebook` output: executed top to bottom, figures in it, no machine's paths."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _check_executed(nb)
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in _outputs(nb))
    assert not re.search(r"PosixPath\('/|^/", text, re.M), "outputs name paths relative to the notebook"
