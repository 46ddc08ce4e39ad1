"""Throttling of password sign-ins: guessing gets slower with every wrong password.

Failures are counted per user name (whether or not the user exists, so a refusal tells
nothing about which names do) and per client address. After `free_failures` of them (four
times as many for an address, which may stand for many people behind one gateway) each further
failure makes that name or address wait twice as long as the last before it may try again:
1 s, 2 s, 4 s, ... up to `max_delay_s`. A try during the wait is refused before any password
is checked, so it costs the server nothing. A success clears the name's count only: an
address's count stays, or someone guessing many names could clear it by signing in to an
account of their own between guesses. The counts live in the process: several server
processes each keep their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .errors import TooManyAttempts

# How many names and addresses are remembered at once; the least recently failed go first.
_CAPACITY = 100_000
# An address stands for up to this many people's mistakes.
_ADDRESS_FACTOR = 4
# Failures this long ago are forgotten.
_FORGET_AFTER_S = 24 * 3600


@dataclass
class _Failures:
    count: int
    last: float
    blocked_until: float


class SignInThrottle:
    def __init__(self, free_failures: int, max_delay_s: int,
                 clock: Callable[[], float] = time.monotonic):
        self.free_failures = free_failures
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    @staticmethod
    def _keys(username: str, address: str | None) -> list[tuple[str, str]]:
        return [("name", username)] + ([("address", address)] if address else [])

    def check(self, username: str, address: str | None) -> None:
        """Raise TooManyAttempts while the name or the address is waiting."""
        now = self._clock()
        with self._lock:
            waits = [f.blocked_until - now for key in self._keys(username, address)
                     if (f := self._failures.get(key)) is not None]
        wait = max(waits, default=0)
        if wait > 0:
            retry_after = math.ceil(wait)
            raise TooManyAttempts(f"Too many failed sign-ins: try again in {retry_after} s",
                                  retry_after)

    def failed(self, username: str, address: str | None) -> None:
        now = self._clock()
        with self._lock:
            for key in self._keys(username, address):
                f = self._failures.pop(key, None)
                if f is None or now - f.last > _FORGET_AFTER_S:
                    f = _Failures(0, now, now)
                f.count += 1
                f.last = now
                free = self.free_failures * (_ADDRESS_FACTOR if key[0] == "address" else 1)
                if f.count > free:
                    f.blocked_until = now + min(self.max_delay_s, 2 ** min(f.count - free - 1, 30))
                self._failures[key] = f  # most recent last
            while len(self._failures) > _CAPACITY:
                self._failures.popitem(last=False)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(("name", username), None)
