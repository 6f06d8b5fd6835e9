"""Tiny random-init model folders, as ``save_pretrained`` writes them, for offline tests and docs.

``save_tiny_folder("vilt", "tiny-vilt", words)`` writes a small random-init task model
(:meth:`moil.backbones.Family.tiny`) and its processor — a word-level BERT tokenizer over
``words`` plus the family's image processor at 32×32 — into one folder, the layout a real
checkpoint has (``config.json``, ``model.safetensors``, ``processor_config.json``, the
tokenizer files). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from moil.backbones import get_family

__all__ = ["FOLDER_FAMILIES", "save_tiny_folder"]

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Families :func:`save_tiny_folder` writes, with their default task.
FOLDER_FAMILIES = {"vilt": "itm", "clip": "contrastive", "bridgetower": "itm", "visualbert": "itm", "blip": "itm"}


def _processor(family: str, tokenizer):
    from transformers import (
        BridgeTowerImageProcessor,
        BridgeTowerProcessor,
        CLIPImageProcessor,
        CLIPProcessor,
        ViltImageProcessor,
        ViltProcessor,
    )

    if family == "vilt":
        return ViltProcessor(ViltImageProcessor(size={"shortest_edge": 32}), tokenizer)
    if family == "visualbert":  # reads visual features: the tokenizer is its whole processor
        return tokenizer
    if family == "blip":
        from transformers import BlipImageProcessor, BlipProcessor

        return BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    if family == "clip":
        return CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), tokenizer)
    images = BridgeTowerImageProcessor(
        size={"shortest_edge": 32}, crop_size={"shortest_edge": 32}, size_divisor=16, do_center_crop=False
    )
    return BridgeTowerProcessor(images, tokenizer)


def save_tiny_folder(
    family: str, folder: str | Path, words: Iterable[str], *, task: str | None = None,
    seed: int = 0, num_answers: int = 5, **overrides,
) -> Path:
    """Write a tiny random-init ``family`` model and its processor to ``folder``.

    Args:
      family: ``"vilt"``, ``"clip"``, ``"bridgetower"``, ``"visualbert"`` (tokenizer only; pass
        ``visual_embedding_dim``) or ``"blip"`` (``BlipForImageTextRetrieval``, a class no moil
        family covers: for ``family = "generic"``).
      folder: the folder to write (created).
      words: the tokenizer's vocabulary (lower-case words; order kept, repeats dropped).
      task: the family's task (default :data:`FOLDER_FAMILIES`).
      seed: the weights' seed.
      num_answers: classifier outputs of an answer task (VQA).
      overrides: more config fields of the tiny model (e.g. ``visual_embedding_dim=320``).

    Returns:
      ``folder`` as a :class:`~pathlib.Path`.
    """
    from transformers import BertTokenizerFast

    if family not in FOLDER_FAMILIES:
        raise ValueError(f"save_tiny_folder: family must be one of {sorted(FOLDER_FAMILIES)}, got {family!r}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys([*SPECIAL, *(w.lower() for w in words)]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"), model_max_length=16)
    task = task or FOLDER_FAMILIES[family]
    if family == "blip":
        model = _tiny_blip(len(vocab), seed)
        model.save_pretrained(folder)
        _processor(family, tokenizer).save_pretrained(folder)
        return folder
    fam = get_family(family)
    if family == "clip":
        text = {**fam.tiny_config["text_config"], "vocab_size": len(vocab), "pad_token_id": 0,
                "bos_token_id": 2, "eos_token_id": 3}  # [SEP] ends the text: CLIP pools there
        model = fam.tiny(task, seed=seed, text_config=text)
    elif family == "bridgetower":
        model = fam.tiny(task, seed=seed, text_config={**fam.tiny_config["text_config"], "vocab_size": len(vocab)})
    else:
        model = fam.tiny(task, seed=seed, num_answers=num_answers, vocab_size=len(vocab), **overrides)
    model.save_pretrained(folder)
    _processor(family, tokenizer).save_pretrained(folder)
    return folder


def _tiny_blip(vocab_size: int, seed: int):
    """A random-init ``BlipForImageTextRetrieval``: hidden 32, 2 layers, 32×32 images, 16×16 patches."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from moil.backbones.family import seeded

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    text = dict(small, vocab_size=vocab_size, encoder_hidden_size=32, max_position_embeddings=40,
                pad_token_id=0, bos_token_id=2, sep_token_id=3, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    config = BlipConfig(text_config=text, vision_config=dict(small, image_size=32, patch_size=16), projection_dim=16)
    return seeded(BlipForImageTextRetrieval, config, seed)
