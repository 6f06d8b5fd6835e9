"""Tests for moil.backbones.family: a family is data over one builder, looked up by name."""

from __future__ import annotations

import importlib

import pytest
import torch

from moil.backbones import FAMILIES, Backbone, Family, get_family


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation cost
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_registry_names_each_family_module(name):
    """get_family(name) is the FAMILY of moil.backbones.<name>, whose module-level build /
    from_pretrained / tiny are that family's."""
    family = get_family(name)
    module = importlib.import_module(f"moil.backbones.{name}")
    assert isinstance(family, Family) and family is module.FAMILY and family.name == name
    assert module.build == family.build and module.tiny == family.tiny
    assert module.from_pretrained == family.from_pretrained


@pytest.mark.parametrize("name", ["vilt", "visualbert", "clip"])
def test_tiny_then_build_by_family_name_and_task(name):
    """For every task: tiny(task) is an eval-mode model of the task's class, and build(model,
    task=task) gives a Backbone over the family's q/k/v with the task's heads."""
    family = get_family(name)
    for task, spec in family.tasks.items():
        model = family.tiny(task)
        assert isinstance(model, spec.cls) and not model.training
        bb = family.build(model, task=task)
        assert isinstance(bb, Backbone) and bb.targets and bb.sharing is not None
        assert all(h.startswith(spec.heads) for h in bb.heads[-1:])


def test_unknown_family_task_and_option_are_refused():
    """An unknown family, task or build option raises naming the known ones."""
    with pytest.raises(ValueError, match=r"unknown backbone family 'vit'.*'vilt'.*from_model"):
        get_family("vit")
    vilt = get_family("vilt")
    with pytest.raises(ValueError, match=r"task must be one of \['itm', 'nlvr2', 'vqa'\].*'gqa'"):
        vilt.tiny("gqa")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['projections'\].*\['pooler'\]"):
        vilt.build(vilt.tiny("itm"), projections=True)


def test_from_pretrained_passes_options_to_build_and_the_rest_to_transformers(tmp_path):
    """from_pretrained(path, task, pooler=False, ...) freezes the pooler (a build option) while
    other keyword arguments (a config field) reach the task class's from_pretrained."""
    vilt = get_family("vilt")
    vilt.tiny("vqa", num_answers=4).save_pretrained(tmp_path)
    bb = vilt.from_pretrained(str(tmp_path), "vqa", pooler=False, output_attentions=True)
    assert bb.model.config.output_attentions and not bb.model.training
    assert bb.heads == ("classifier.0.weight", "classifier.0.bias", "classifier.1.weight",
                        "classifier.1.bias", "classifier.3.weight", "classifier.3.bias")
    assert vilt.from_pretrained(str(tmp_path), "vqa").heads[0].startswith("vilt.pooler.")
