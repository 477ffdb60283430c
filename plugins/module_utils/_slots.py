# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: __slots__ for the dataclasses the watcher holds thousands of.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``with_slots``: a dataclass made again with ``__slots__`` and no per-instance ``__dict__``.

``dataclass(slots=True)`` needs Python 3.10 and the collection runs on 3.7 too, so this does what
it does: the class is created again from its namespace, with its fields as slots (their defaults
live on in the generated ``__init__``). A frozen one stays frozen (its ``__setattr__`` refuses
every field) and gets ``__getstate__``/``__setstate__``, so that copy and pickle still work.
Apply it on top of ``@dataclass``; methods must not use ``super()`` without arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple, Type, TypeVar

T = TypeVar("T")


def _getstate(self: Any) -> Tuple[Any, ...]:
    return tuple(getattr(self, name) for name in self.__slots__)


def _setstate(self: Any, state: Tuple[Any, ...]) -> None:
    for name, value in zip(self.__slots__, state):
        object.__setattr__(self, name, value)


def with_slots(cls: Type[T]) -> Type[T]:
    """``cls`` (a dataclass) again, with ``__slots__``."""
    klass: Any = cls
    names = tuple(field.name for field in dataclasses.fields(klass))
    namespace = {key: value for key, value in klass.__dict__.items()
                 if key not in names and key not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = names
    if klass.__dataclass_params__.frozen:
        namespace.setdefault("__getstate__", _getstate)
        namespace.setdefault("__setstate__", _setstate)
    remade: Type[T] = type(klass)(klass.__name__, klass.__bases__, namespace)
    return remade
