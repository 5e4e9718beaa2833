"""Run a function in a forked child, for tests that change process-wide state (capabilities, seccomp filters)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable


def in_child(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a forked child and return its JSON-encodable result; the test process stays unchanged."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            try:
                out = json.dumps({"ok": fn()})
            except BaseException as err:
                out = json.dumps({"err": f"{type(err).__name__}: {err}"})
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child died: status {status:#x}"
    result = json.loads(b"".join(chunks))
    assert "err" not in result, result["err"]
    return result["ok"]
