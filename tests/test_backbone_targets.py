"""Tests for moil.backbones.targets: pattern → targets, parameter selection, partition/combine."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from moil.backbones import combine, linear_layers, partition, select_params, select_targets


class Block(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.attention = nn.ModuleDict(
            {"query": nn.Linear(d, d), "key": nn.Linear(d, d), "value": nn.Linear(d, d, bias=False)}
        )
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.mha = nn.MultiheadAttention(d, 1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(4, 3)


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net()


def test_linear_layers_lists_linears_and_packed_in_proj(net):
    layers = linear_layers(net)
    assert "layers.0.attention.query" in layers
    info = layers["layers.1.mha.in_proj"]
    assert (info.weight, info.bias) == ("layers.1.mha.in_proj_weight", "layers.1.mha.in_proj_bias")
    assert (info.out_features, info.in_features) == (12, 4)
    assert layers["layers.0.attention.value"].bias is None
    assert "layers.0.mha.out_proj" in layers  # NonDynamicallyQuantizableLinear is a Linear


def test_suffixes_match_at_a_dot_in_model_order(net):
    got = select_targets(net, ["query", "value"])
    assert got == (
        "layers.0.attention.query", "layers.0.attention.value",
        "layers.1.attention.query", "layers.1.attention.value",
    )
    # "uery" is not a suffix at a "." boundary
    with pytest.raises(ValueError, match="matched no linear layer"):
        select_targets(net, ["uery"])


def test_regex_is_a_full_match_and_exclude_drops(net):
    got = select_targets(net, r"layers\.\d+\.attention\.(query|key)", exclude=[r"1.attention.key"])
    assert got == ("layers.0.attention.query", "layers.0.attention.key", "layers.1.attention.query")
    with pytest.raises(ValueError, match="matched no linear"):
        select_targets(net, r"attention\.query")  # not a full match


def test_packed_in_proj_is_selectable(net):
    assert select_targets(net, ["mha.in_proj"]) == ("layers.0.mha.in_proj", "layers.1.mha.in_proj")


def test_nothing_matched_lists_real_layers_and_close_matches(net):
    with pytest.raises(ValueError) as err:
        select_targets(net, ["querry"])
    msg = str(err.value)
    assert "layers.0.attention.query" in msg  # examples of real names
    assert "Close matches" in msg or "query" in msg
    assert "targets=" in msg  # what to write instead


def test_non_linear_match_names_module_and_type(net):
    with pytest.raises(ValueError, match=re.escape("'layers.0.mlp', a Sequential, not a linear layer")):
        select_targets(net, ["mlp"])
    with pytest.raises(ValueError, match="MultiheadAttention.*in_proj"):
        select_targets(net, ["mha"])
    with pytest.raises(ValueError, match="GELU"):
        select_targets(net, r"layers\.0\.mlp\.\d")


def test_bad_regex_and_bad_types(net):
    with pytest.raises(ValueError, match="not a valid regex"):
        select_targets(net, "(")
    with pytest.raises(TypeError):
        select_targets(net, [3])


def test_select_params_prefix_regex_and_errors(net):
    assert select_params(net, ["head"]) == ("head.weight", "head.bias")
    assert select_params(net, r"head\.w.*") == ("head.weight",)
    with pytest.raises(ValueError, match="'hed' selects no parameter"):
        select_params(net, ["head", "hed"])


def test_partition_combine_round_trip(net):
    params = dict(net.named_parameters())
    for keep in (lambda k: "attention" in k, {"head.weight", "head.bias"}, ()):
        kept, rest = partition(params, keep)
        assert not kept.keys() & rest.keys()
        joined = combine(kept, rest)
        assert joined.keys() == params.keys()
        assert all(joined[k] is params[k] for k in params)
    with pytest.raises(KeyError, match="more than one"):
        combine({"a": 1}, {"a": 2})
