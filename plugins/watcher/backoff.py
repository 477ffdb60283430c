# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capped exponential backoff with jitter, for every retry loop of the watcher."""

from __future__ import annotations

import random
from typing import Callable


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn from [step/2, step]."""

    def __init__(self, initial: float, maximum: float, rand: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rand = rand
        self.step = initial

    def next(self) -> float:
        delay = self.step * (0.5 + self.rand() / 2)
        self.step = min(self.step * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.step = self.initial
