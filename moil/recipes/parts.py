"""Parts a recipe builds once per backbone (adapters, optimisers, momentum targets)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["PerBackbone"]


class PerBackbone:
    """A memo of ``build(backbone)``, a pure function of a recipe's configuration and the
    backbone: the parts are made on the first step, not on every one. Weakly keyed, so a
    backbone that is dropped frees its entry; results never depend on it."""

    def __init__(self) -> None:
        self._built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, backbone: Any, build: Callable[[Any], Any]) -> Any:
        try:
            return self._built[backbone]
        except KeyError:
            pass
        except TypeError:  # not weak-referenceable: build every time
            return build(backbone)
        parts = self._built[backbone] = build(backbone)
        return parts

    def __getstate__(self) -> dict:
        return {}  # a memo travels empty (e.g. to a worker process)

    def __setstate__(self, state: dict) -> None:
        self.__init__()
