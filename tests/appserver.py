"""Start app.py's demo on 127.0.0.1 for tests, showing a given weights folder first."""

from __future__ import annotations

import importlib
import os
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(weights: str | None):
    """Import app.py with CVAEGAN_WEIGHTS=weights (None: the bundled weights only) and launch it in this
    process with the app's own launch options (CSS, upload limit) -> (module, url)."""
    if weights is None:
        os.environ.pop("CVAEGAN_WEIGHTS", None)
    else:
        os.environ["CVAEGAN_WEIGHTS"] = weights
    if "app" in sys.modules:
        app = importlib.reload(sys.modules["app"])
    else:
        app = importlib.import_module("app")
    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.LAUNCH)
    return app, f"http://127.0.0.1:{port}"
