"""Helpers shared by the GUI tests."""

from __future__ import annotations


def wait_for(qtbot, widget, signal, action=None, timeout: int = 60_000):
    """Run ``action`` and wait for ``signal``; return its arguments. On a timeout, say what the
    widget's message line says (why a run stopped)."""
    try:
        with qtbot.waitSignal(signal, timeout=timeout) as blocker:
            if action is not None:
                action()
    except qtbot.TimeoutError as exc:
        raise AssertionError(f"{exc}; the widget says: {widget.message.text()!r}") from exc
    return blocker.args
