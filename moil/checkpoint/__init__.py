"""Checkpoints: flat ``dict[str, Tensor]`` + JSON metadata in one safetensors file.

Safetensors only (never pickle): a checkpoint holds tensors and text, so loading
one can never run code. Writes are atomic — a crash or a kill mid-write leaves
the previous checkpoint intact — and carry a SHA-256 of the tensor data, checked
on load (:class:`CorruptCheckpointError` names the file and the previous one). A nested state (a recipe's student, optimiser,
RNG, step) is stored by :func:`split_state`: its tensors under ``"/"``-joined keys,
its numbers as JSON scalars in the metadata; :func:`restore_state` fills a
*template* (a fresh state of the same structure) back from them, checking every
key, shape, dtype and type, so a run resumes bitwise and a checkpoint of another
configuration is refused instead of half-loaded.

Example:
  >>> state = {"student": {"q::lora_a": torch.ones(2, 3)}, "step": 7}
  >>> tensors, scalars = split_state(state)       # {"student/q::lora_a": …}, {"step": 7}
  >>> save_checkpoint(path, tensors, {"scalars": scalars})           # doctest: +SKIP
  >>> tensors, meta = load_checkpoint(path)                          # doctest: +SKIP
  >>> restore_state(state, tensors, meta["scalars"])["step"]         # doctest: +SKIP
  7
"""

from moil.checkpoint.files import (
    FORMAT,
    VERSION,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    check_matches,
    load_checkpoint,
    previous_path,
    read_metadata,
    save_checkpoint,
)
from moil.checkpoint.state import restore_state, split_state

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "check_matches",
    "load_checkpoint",
    "previous_path",
    "read_metadata",
    "restore_state",
    "save_checkpoint",
    "split_state",
]
