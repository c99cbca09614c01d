"""The param-group views and checks MuonClip's step relies on, called directly."""
from __future__ import annotations

import pytest
import torch

from muonclip.optim.group_options import expert_flags, head_blocks, label, validate_group


def _group(*shapes, **options):
    return {"params": [torch.zeros(s) for s in shapes], **options}


def test_expert_flags_mark_only_declared_3d_stacks():
    assert expert_flags(_group((4, 8, 8), (8, 8), (8, 4, 3))) == [False, False, False]
    assert expert_flags(_group((4, 8, 8), (8, 8), expert_stacks=True)) == [True, False]
    assert expert_flags(_group((4, 8, 8), (8, 4, 3), expert_stacks=[True, False])) == [True, False]


def test_label_names_the_parameter_or_its_place_and_shape():
    assert label(_group((8, 8), param_names=["layer.q.weight"]), 0) == "parameter 'layer.q.weight'"
    assert label(_group((8, 8), (3, 5), algorithm="adamw"), 1) == "parameter #1 of shape (3, 5) in a 'adamw' group"


def test_head_blocks_group_neighbouring_heads_and_keep_whole_matrices_whole():
    group = _group((32, 16), (16, 32), head_blocks=[(0, 4), None], heads_per_block=2)
    assert head_blocks(group) == [(0, 8), None]


@pytest.mark.parametrize("group,match", [
    (_group((8, 8), algorithm="lion"), "Unknown algorithm 'lion'"),
    (_group((8,), param_names=["norm.weight"]), "'norm.weight' has shape \\(8,\\)"),
    (_group((8, 8), expert_stacks=[True]), "declared an expert stack"),
    (_group((30, 16), head_blocks=[(0, 4)], param_names=["attn.q"]), "head_blocks of parameter 'attn.q'"),
    (_group((8, 8), param_names=["a", "b"]), "param_names must name every parameter"),
])
def test_validate_group_names_what_is_wrong(group, match):
    with pytest.raises(ValueError, match=match):
        validate_group(group)
