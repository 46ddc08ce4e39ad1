"""RecentlyUsed: the bounded, thread-safe LRU map that remembers compiled queries, result
shapes, counts and page states for the core's parts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class RecentlyUsed:
    """A bounded map that forgets its least recently used entries, safe across threads. A
    missing value is made outside the lock: two threads may both make it, and either is kept."""

    def __init__(self, size: int):
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value
