"""Tests for moil.checkpoint: atomic safetensors checkpoints, and states (trees, RNG and scalars)
split into tensors + scalars."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import moil.checkpoint.files as ckpt
from moil.checkpoint import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    load_checkpoint,
    restore_state,
    save_checkpoint,
    split_state,
)

SETTINGS = settings(derandomize=True, max_examples=40, deadline=None)


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 6, generator=g)
    return {
        "student/q::lora_a": torch.randn(3, 5, generator=g),
        "student/q::lora_b": torch.randn(5, 3, generator=g, dtype=torch.float64),
        "half": torch.randn(7, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(2, 2, generator=g).to(torch.float16),
        "ids": torch.randint(-5, 5, (3,), generator=g),
        "bytes": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # non-contiguous view
        "same_storage_a": base[:2],  # shares storage with base and with "transposed"
        "same_storage_b": base,
        "param": torch.nn.Parameter(torch.ones(2)),
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_bitwise(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, value in want.items():
        assert (got[k].dtype, got[k].shape) == (value.dtype, value.shape), k
        assert torch.equal(_bits(got[k]), _bits(value)), k


# ----------------------------------------------------------------------------- round trip


def test_round_trip_is_bitwise_and_keeps_metadata(tmp_path):
    """load(save(t, m)) == (t, m) bit for bit, for every dtype, empty, 0-d, views and shared storage."""
    tensors = _tensors()
    meta = {"step": 12, "lr": 1e-4, "recipe": {"name": "moil", "ranks": [4, 8]}}
    save_checkpoint(tmp_path / "c.safetensors", tensors, meta)
    got, got_meta = load_checkpoint(tmp_path / "c.safetensors")
    _assert_bitwise(got, tensors)
    assert got_meta == meta


def test_save_never_mutates_inputs(tmp_path):
    """save_checkpoint leaves the caller's dict, tensors, strides and grad flags unchanged."""
    tensors = _tensors()
    before = {
        k: (v.detach().clone(), v.stride(), v.requires_grad, v.data_ptr())
        for k, v in tensors.items()
    }
    keys = list(tensors)
    save_checkpoint(tmp_path / "c.safetensors", tensors)
    assert list(tensors) == keys
    for k, (value, stride, grad, ptr) in before.items():
        assert torch.equal(tensors[k].detach(), value)
        assert (tensors[k].stride(), tensors[k].requires_grad, tensors[k].data_ptr()) == (
            stride,
            grad,
            ptr,
        )


def test_overwrite_replaces_and_creates_parents(tmp_path):
    """Saving twice to one path keeps the second; missing parent directories are created."""
    path = tmp_path / "a" / "b" / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(2)})
    save_checkpoint(path, {"x": torch.ones(3)})
    got, _ = load_checkpoint(path)
    assert torch.equal(got["x"], torch.ones(3))


def test_non_tensor_values_and_non_json_metadata_are_rejected(tmp_path):
    """Inputs safetensors cannot hold raise TypeError naming the fix, and write nothing."""
    with pytest.raises(TypeError, match="split_state"):
        save_checkpoint(tmp_path / "c.safetensors", {"step": 3})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "c.safetensors", {"x": torch.zeros(1)}, {"t": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomicity


def test_crash_before_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    """os.replace failing (a crash after writing the temp file) leaves the old file and no temp file."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(4)}, {"v": 1})

    def crash(*args, **kwargs):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"x": torch.ones(4)}, {"v": 2})
    monkeypatch.undo()
    got, meta = load_checkpoint(path)
    assert torch.equal(got["x"], torch.zeros(4)) and meta == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_interrupt_mid_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    """A writer interrupted half-way (KeyboardInterrupt after a partial file) leaves the old file intact."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(4)})

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b'\x10\x00\x00\x00\x00\x00\x00\x00{"x":')
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": torch.ones(4)})
    monkeypatch.undo()
    got, _ = load_checkpoint(path)
    assert torch.equal(got["x"], torch.zeros(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_saves_never_leaves_a_torn_checkpoint(tmp_path):
    """A process killed (SIGKILL) while saving repeatedly leaves a checkpoint that loads completely."""
    path = tmp_path / "c.safetensors"
    script = textwrap.dedent(
        f"""
        import torch
        from moil.checkpoint import save_checkpoint
        big = torch.arange(4_000_000, dtype=torch.float32)
        save_checkpoint({str(path)!r}, {{"x": big}}, {{"i": 0}})
        i = 0
        while True:
            i += 1
            save_checkpoint({str(path)!r}, {{"x": big + i}}, {{"i": i}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    got, meta = load_checkpoint(path)
    assert torch.equal(got["x"], torch.arange(4_000_000, dtype=torch.float32) + meta["i"])


# ----------------------------------------------------------------------------- bad files


def test_missing_file_names_the_path(tmp_path):
    """A missing checkpoint raises FileNotFoundError with the path and how checkpoints are made."""
    with pytest.raises(
        FileNotFoundError, match=r"nope\.safetensors.*does not exist.*save_checkpoint"
    ):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_checkpoint(tmp_path)


@given(st.data())
@SETTINGS
def test_any_truncation_is_reported_as_corrupt(tmp_path_factory, data):
    """Every proper prefix of a checkpoint file raises CorruptCheckpointError naming the path."""
    d = tmp_path_factory.mktemp("trunc")
    path = d / "c.safetensors"
    save_checkpoint(path, {"a": torch.randn(3, 4), "b": torch.arange(5)}, {"k": "v"})
    raw = path.read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    path.write_bytes(raw[:cut])
    with pytest.raises(
        CorruptCheckpointError, match=r"c\.safetensors.*corrupt or truncated; delete it or restore"
    ):
        load_checkpoint(path)


@given(st.binary(min_size=0, max_size=300))
@SETTINGS
def test_random_garbage_is_reported_as_corrupt(tmp_path_factory, blob):
    """Arbitrary bytes never load: they raise CorruptCheckpointError, not a raw library error."""
    path = tmp_path_factory.mktemp("junk") / "c.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(path)


def test_plain_safetensors_without_tag_is_rejected(tmp_path):
    """A valid safetensors file not written by save_checkpoint is refused with the format tag named."""
    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CorruptCheckpointError, match="not a moil checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_newer_format_version_asks_to_upgrade(tmp_path):
    """A file tagged with a future format version says which version and to upgrade moil."""
    meta = {
        "format": "pt",
        "moil.format": ckpt.FORMAT,
        "moil.format_version": str(ckpt.VERSION + 1),
    }
    save_file({"x": torch.zeros(2)}, tmp_path / "new.safetensors", metadata=meta)
    with pytest.raises(CorruptCheckpointError, match="upgrade moil"):
        load_checkpoint(tmp_path / "new.safetensors")


# ----------------------------------------------------------------------------- expected


def test_expected_mismatch_names_keys_shapes_and_dtypes(tmp_path):
    """`expected` catches missing/unexpected keys, shapes and dtypes, naming key and both values."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)})
    ok = {"a": torch.empty(2, 3, device="meta"), "b": torch.empty(4), "c": torch.empty(1)}
    load_checkpoint(path, expected=ok)
    cases = [
        ({**ok, "d": torch.empty(1)}, r"missing.*'d'"),
        ({"a": ok["a"], "b": ok["b"]}, r"unexpected.*'c'"),
        ({**ok, "a": torch.empty(3, 2)}, r"'a' has shape \(2, 3\), expected \(3, 2\)"),
        (
            {**ok, "b": torch.empty(4, dtype=torch.float64)},
            r"'b' has dtype torch.float32, expected torch.float64",
        ),
    ]
    for expected, pattern in cases:
        with pytest.raises(CheckpointMismatchError, match=f"another model/config.*{pattern}"):
            load_checkpoint(path, expected=expected)


# ----------------------------------------------------------------------------- states

segments = st.text(alphabet="ab.:_-0", min_size=1, max_size=5)
leaves = st.one_of(
    st.builds(lambda n: torch.arange(float(n)), st.integers(0, 3)),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
)
trees = st.recursive(
    leaves,
    lambda children: st.dictionaries(segments, children, min_size=1, max_size=3),
    max_leaves=8,
)


def _save_load(tmp_path, state):
    """A state through a file as train.save_state/load_state store it: tensors + JSON scalars."""
    tensors, scalars = split_state(state)
    save_checkpoint(tmp_path / "c.safetensors", tensors, {"scalars": scalars})
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors")
    return restore_state(state, loaded, meta["scalars"])


@given(st.dictionaries(segments, trees, max_size=4))
@SETTINGS
def test_restore_state_inverts_split_state(tree):
    """restore_state(tree, *split_state(tree)) == tree (same tensors, by identity; scalars with
    their type); keys with '.' and '::' survive, and splitting the result gives the same split."""
    tensors, scalars = split_state(tree)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert all(isinstance(v, (bool, int, float)) for v in scalars.values())

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return a is b
        if not isinstance(a, dict):
            return type(a) is type(b) and (a == b or a != a and b != b)  # nan == nan
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)

    restored = restore_state(tree, tensors, scalars)
    assert same(restored, tree)
    again = split_state(restored)
    assert again[0].keys() == tensors.keys() and all(again[0][k] is v for k, v in tensors.items())
    assert again[1].keys() == scalars.keys() and all(same(again[1][k], v) for k, v in scalars.items())


def test_split_state_takes_namedtuples_and_restores_empty_mappings():
    """NamedTuple fields split by name and come back as the same NamedTuple; an empty mapping (no
    heads) has no key to store and is restored from the template."""
    from typing import NamedTuple

    class Opt(NamedTuple):
        step: int
        exp_avg: dict

    state = {"opt": Opt(3, {"w": torch.ones(2)}), "heads": {}}
    tensors, scalars = split_state(state)
    assert (tensors.keys(), scalars) == ({"opt/exp_avg/w"}, {"opt/step": 3})
    template = {"opt": Opt(0, {"w": torch.zeros(2)}), "heads": {}}
    restored = restore_state(template, tensors, scalars)
    assert isinstance(restored["opt"], Opt) and restored["opt"].step == 3 and restored["heads"] == {}
    assert restored["opt"].exp_avg["w"] is tensors["opt/exp_avg/w"]


def test_split_state_rejects_what_it_cannot_invert():
    """'/' in a key, empty keys and leaves that are not tensors or numbers raise; tensors or
    scalars that do not fit the template raise, naming the key."""
    with pytest.raises(ValueError, match="without '/'"):
        split_state({"a/b": torch.zeros(1)})
    with pytest.raises(ValueError, match="non-empty"):
        split_state({"": torch.zeros(1)})
    with pytest.raises(TypeError, match="get_state"):
        split_state({"a": {"step": "3"}})
    template = {"a": {"b": torch.zeros(1)}, "step": 1}
    with pytest.raises(CheckpointMismatchError, match=r"does not match.*unexpected.*'a/b/c'"):
        restore_state(template, {"a/b": torch.zeros(1), "a/b/c": torch.zeros(1)}, {"step": 1})
    with pytest.raises(CheckpointMismatchError, match=r"missing.*'a/b'.*unexpected.*'a'"):
        restore_state(template, {"a": torch.zeros(1)}, {"step": 1})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected.*'a//b'"):
        restore_state(template, {"a/b": torch.zeros(1), "a//b": torch.zeros(1)}, {"step": 1})
    with pytest.raises(CheckpointMismatchError, match=r"'a/b' has shape \(2,\), expected \(1,\)"):
        restore_state(template, {"a/b": torch.zeros(2)}, {"step": 1})
    with pytest.raises(CheckpointMismatchError, match=r"'step' is 1.5, expected a int"):
        restore_state(template, {"a/b": torch.zeros(1)}, {"step": 1.5})


def test_generator_state_resumes_bitwise_through_a_file(tmp_path):
    """A generator saved mid-stream (as its get_state() tensor) and restored from disk continues
    with the same draws; the step comes back as the int it was."""
    g = torch.Generator().manual_seed(1234)
    torch.randn(10, generator=g)
    state = {"rng": {"torch": g.get_state()}, "step": 10}
    expected = torch.randn(50, generator=g)
    template = {"rng": {"torch": torch.Generator().get_state()}, "step": 0}
    tensors, scalars = split_state(state)
    save_checkpoint(tmp_path / "c.safetensors", tensors, {"scalars": scalars})
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors")
    restored = restore_state(template, loaded, meta["scalars"])
    resumed = torch.Generator()
    resumed.set_state(restored["rng"]["torch"])
    assert torch.equal(torch.randn(50, generator=resumed), expected)
    assert restored["step"] == 10 and type(restored["step"]) is int


def test_split_state_does_not_copy():
    """split_state hands out the state's own tensors (no copy): saving is what copies."""
    g = torch.Generator().manual_seed(0)
    state = {"rng": g.get_state()}
    assert split_state(state)[0]["rng"] is state["rng"]
    torch.rand(3, generator=g)
    assert torch.equal(state["rng"], torch.Generator().manual_seed(0).get_state())


@given(st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True)))
@SETTINGS
def test_scalars_round_trip_exactly(tmp_path_factory, value):
    """A state's scalar through a checkpoint file is the same value, type and bits (nan, -0.0)."""
    out = _save_load(tmp_path_factory.mktemp("s"), {"x": value})["x"]
    assert type(out) is type(value)
    if isinstance(value, float):
        assert struct.pack("<d", out) == struct.pack("<d", value)
    else:
        assert out == value


def test_scalar_errors(tmp_path):
    """Integers beyond int64 round-trip exactly too (JSON); non-numbers and scalars of another
    type than the template's are refused."""
    assert _save_load(tmp_path, {"x": 2**63})["x"] == 2**63
    with pytest.raises(TypeError):
        split_state({"x": "3"})
    with pytest.raises(CheckpointMismatchError, match="expected a float"):
        restore_state({"x": 0.0}, {}, {"x": True})


def test_metadata_json_shape_on_disk(tmp_path):
    """The header stores one JSON string plus the format tag and version (readable by any tool)."""
    from safetensors import safe_open

    save_checkpoint(tmp_path / "c.safetensors", {"x": torch.zeros(1)}, {"a": [1, 2]})
    with safe_open(tmp_path / "c.safetensors", "pt") as f:
        header = f.metadata()
    assert header["moil.format"] == "moil.checkpoint" and header["moil.format_version"] == "1"
    assert json.loads(header["moil.metadata"]) == {"a": [1, 2]}
    assert os.path.getsize(tmp_path / "c.safetensors") > 0


# ----------------------------------------------------------------------------- integrity


def test_a_flipped_data_byte_is_refused_naming_the_file_and_the_previous_one(tmp_path):
    """Fault 11: the header's SHA-256 of the tensor data is checked on load; one flipped byte
    in the data raises CorruptCheckpointError naming the file and the previous good one."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(8)}, {"v": 1})
    save_checkpoint(path, {"x": torch.arange(8.0)}, {"v": 2}, keep_previous=True)
    previous = ckpt.previous_path(path)
    assert load_checkpoint(previous)[1] == {"v": 1}
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=rf"c\.safetensors.*checksum.*{previous.name}"):
        load_checkpoint(path)
    previous.unlink()
    with pytest.raises(CorruptCheckpointError, match="Delete it or restore a backup"):
        load_checkpoint(path)


def test_read_back_mismatch_keeps_the_old_file(tmp_path, monkeypatch):
    """A file that reads back differently from what was written (a failing disk) is never
    renamed over the last good checkpoint."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(4)}, {"v": 1})
    real = ckpt.save_file

    def corrupting(tensors, filename, metadata=None):
        real({k: v + 1 for k, v in tensors.items()}, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", corrupting)
    with pytest.raises(CorruptCheckpointError, match="read back differs"):
        save_checkpoint(path, {"x": torch.ones(4)}, {"v": 2}, keep_previous=True)
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_a_bf16_momentum_target_of_an_older_checkpoint_restores_by_exact_upcast():
    """A checkpoint written before momentum targets of bf16/fp16 teachers were kept in
    float32 resumes: the stored target is upcast exactly (every bf16/fp16 value is a
    float32 value) into the float32 template. Only a field a state names in its
    ``UPCAST_FIELDS`` may: a bf16 tensor elsewhere (a teacher) is still refused."""
    from moil.momentum import MomentumState, MomentumTarget

    for low in (torch.bfloat16, torch.float16):
        teacher = {"w": torch.randn(4, 3).to(low), "b": torch.randn(3).to(low)}
        old = {"m0": MomentumState(target={k: v.clone() for k, v in teacher.items()}, step=7)}
        template = {"m0": MomentumTarget(0.9).init(teacher)}
        restored = restore_state(template, *split_state(old))
        assert restored["m0"].step == 7
        for k, v in teacher.items():
            got = restored["m0"].target[k]
            assert got.dtype == torch.float32 and torch.equal(got, v.float()), k
        with pytest.raises(CheckpointMismatchError, match="dtype"):
            restore_state({"teacher": {"w": torch.zeros(4, 3)}}, *split_state({"teacher": {"w": teacher["w"]}}))


def test_a_save_replacing_the_file_between_safetensors_two_opens_is_reread_not_called_corrupt(tmp_path, monkeypatch):
    """Law: a load that races a save (safetensors reads the header in one open and the data
    in another; the save renames a new file in between) returns one whole saved version —
    the newer one's tensors with the newer one's metadata — never a false "corrupt"."""
    path, newer = tmp_path / "c.safetensors", tmp_path / "staged"
    save_checkpoint(path, {"x": torch.zeros(8)}, {"step": 1})
    save_checkpoint(newer, {"x": torch.ones(8)}, {"step": 2})
    real, calls = ckpt.safe_open, []

    class TornOpen:  # the first open: the old header, then the data of the file saved meanwhile
        def __init__(self, file, **kw):
            calls.append(file)
            self.head, self.kw = real(file, **kw).__enter__(), kw
            if newer.exists():
                os.replace(newer, path)
            self.data = real(file, **kw).__enter__()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def metadata(self):
            return self.head.metadata()

        def keys(self):
            return self.head.keys()

        def get_tensor(self, key):
            return self.data.get_tensor(key)

    monkeypatch.setattr(ckpt, "safe_open", TornOpen)
    tensors, metadata = load_checkpoint(path)
    assert len(calls) == 2 and metadata == {"step": 2} and torch.equal(tensors["x"], torch.ones(8))
    # An unreplaced file's fault is its own: reported at once, not retried.
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    calls.clear()
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        load_checkpoint(path)
    assert len(calls) == 1


def test_a_checkpoint_removed_or_rewritten_during_every_read_names_what_happened(tmp_path, monkeypatch):
    """A file removed while read gives FileNotFoundError saying so (not "corrupt"); a file that a
    save overtakes on every read gives an error saying to read it while its run is paused."""
    from moil.checkpoint.atomic import read_unreplaced

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(3)}, {"step": 1})
    real = ckpt._read_verified

    def then_removed(p):
        out = real(p)
        p.unlink()
        return out

    monkeypatch.setattr(ckpt, "_read_verified", then_removed)
    with pytest.raises(FileNotFoundError, match="removed while it was being read"):
        load_checkpoint(path)

    save_checkpoint(path, {"x": torch.zeros(3)}, {"step": 1})
    saves = iter(range(2, 100))

    def overtaken(p):
        out = real(p)
        time.sleep(0.002)  # a distinct mtime
        save_checkpoint(p, {"x": torch.zeros(3)}, {"step": next(saves)})
        return out

    monkeypatch.setattr(ckpt, "_read_verified", overtaken)
    with pytest.raises(CorruptCheckpointError, match="replaced by a newer save during each of 5 reads"):
        load_checkpoint(path)
    with pytest.raises(RuntimeError, match="^3$"):  # busy() is told how many reads were tried
        read_unreplaced(path, overtaken, busy=lambda tries: RuntimeError(str(tries)), tries=3)
    with pytest.raises(ValueError, match="tries must be >= 1"):
        read_unreplaced(path, real, busy=RuntimeError, tries=0)
