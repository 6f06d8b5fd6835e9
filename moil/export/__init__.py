"""Export a trained student: merged plain weights, moil's compact student, or PEFT LoRA.

* :func:`export_merged` — a Hugging Face checkpoint with ``Ŵ, b̂`` in place of
  ``W0, b0``: zero inference overhead, loads with ``from_pretrained`` alone.
* :func:`save_student` / :func:`load_student` — the adapter's own parameters,
  heads and a JSON description to rebuild the approximation (any approximation;
  :mod:`~moil.export.components` stores it); loading gives a :class:`SavedStudent`.
* :func:`export_peft` — a PEFT LoRA adapter directory (``LowRank`` students only).
"""

from moil.export.components import decode_component, encode_component
from moil.export.merged import export_merged, merged_copy
from moil.export.peft import export_peft, peft_state_dict
from moil.export.student import SavedStudent, check_shapes, load_student, save_student

__all__ = [
    "SavedStudent",
    "check_shapes",
    "decode_component",
    "encode_component",
    "export_merged",
    "export_peft",
    "load_student",
    "merged_copy",
    "peft_state_dict",
    "save_student",
]
