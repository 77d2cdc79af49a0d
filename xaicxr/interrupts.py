"""Ctrl-C and SIGTERM as exceptions that unwind every ``with`` block (the run lock, atomic
writes), raised only where raising is safe.

Python runs a signal handler in the main thread between two bytecodes, wherever those are. An
exception raised there from inside TensorFlow or Keras (while a function is being traced, while
the runtime creates its context) has killed the process with SIGSEGV, or come out as an unrelated
``ValueError`` from Keras. So while the main thread is inside those packages the signal is held,
and raised at the next safe point: a progress bar's advance (:func:`raise_if_interrupted`), a
training batch's end, or the end of the guarded block. A second signal while one is held is
raised at once, so an insistent Ctrl-C still stops a stuck call.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

FRAMEWORKS = ("tensorflow", "keras", "tf_keras", "tf_keras_vis")


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as Ctrl-C is (a ``KeyboardInterrupt`` the commands turn into exit 143)."""


_held: list[type[KeyboardInterrupt]] = []


def raise_if_interrupted() -> None:
    """A safe point: raise the signal held since the main thread was inside TensorFlow, if any."""
    if _held:
        raise _held.pop()()


def _inside_framework(frame: FrameType | None) -> bool:
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.partition(".")[0] in FRAMEWORKS:
            return True
        frame = frame.f_back
    return False


def _handler(kind: type[KeyboardInterrupt]):
    def handle(signum: int, frame: FrameType | None) -> None:
        if _held or not _inside_framework(frame):
            _held.clear()
            raise kind()
        _held.append(kind)
    return handle


@contextmanager
def interrupts_at_safe_points() -> Iterator[None]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`,
    outside TensorFlow at once and inside it at the next safe point. Only the main thread can
    install handlers; elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, _handler(KeyboardInterrupt)),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _handler(Terminated))}
    _held.clear()
    try:
        yield
        raise_if_interrupted()
    finally:
        _held.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
