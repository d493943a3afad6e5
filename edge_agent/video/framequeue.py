"""A small bounded hand-off between the capture thread and the consumer.

``queue.Queue`` cannot drop its oldest item atomically, and live video wants exactly that: when the
consumer falls behind, the frame worth processing is the newest one. The ``block`` policy is for offline
runs over files, where every frame matters more than latency. A final item (the end-of-stream marker) is
always accepted, even over the bound, so the consumer can never miss the end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


class FrameQueue(Generic[T]):
    def __init__(self, maxsize: int, policy: Literal["drop_oldest", "block"] = "drop_oldest"):
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize, self.policy = maxsize, policy
        self._items: deque[T] = deque()
        self._cond = threading.Condition()

    def put(self, item: T, cancelled: Callable[[], bool] = lambda: False,
            on_wait: Callable[[], None] | None = None) -> tuple[bool, int]:
        """Add ``item``. Returns (queued, number of old items dropped to make room).

        With the ``block`` policy, waits for room; gives up (returns queued=False) once ``cancelled()``
        is true. ``on_wait`` is called about every 0.1 s while waiting (the capture loop uses it to tell
        its stall watchdog that a blocked reader is not a stalled camera).
        """
        with self._cond:
            dropped = 0
            if self.policy == "drop_oldest":
                while len(self._items) >= self.maxsize:
                    self._items.popleft()
                    dropped += 1
            else:
                while len(self._items) >= self.maxsize:
                    if cancelled():
                        return False, 0
                    self._cond.wait(0.1)
                    if on_wait is not None:
                        on_wait()
            self._items.append(item)
            self._cond.notify_all()
            return True, dropped

    def put_final(self, item: T) -> None:
        """Append without limit or waiting (end-of-stream marker)."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, or None when nothing arrived within ``timeout`` seconds (None: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
