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


def launch_app(weights: str):
    """Import app.py with CVAEGAN_WEIGHTS=weights and launch it in this process -> (module, url)."""
    os.environ["CVAEGAN_WEIGHTS"] = weights
    if "app" in sys.modules:
        app = importlib.reload(sys.modules["app"])
    else:
        app = importlib.import_module("app")
    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    max_file_size="10mb")
    return app, f"http://127.0.0.1:{port}"
