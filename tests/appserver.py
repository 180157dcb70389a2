"""Start app.py's demo on 127.0.0.1 for tests, showing a given weights folder first."""

from __future__ import annotations

import socket
import types


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(weights: str | None):
    """Build app.py's demo for a registry of the bundled weights plus `weights` (None: the bundled ones only)
    and launch it in this process with the app's own launch options (CSS, upload limit) -> (app, url).

    `app` carries what tests use of app.py: demo, registry, AUTO, LAUNCH and the module's file."""
    import app as module
    from cvaegan import service as S

    registry = S.ModelRegistry(weights)
    demo = module.make_demo(registry)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **module.LAUNCH)
    app = types.SimpleNamespace(
        demo=demo, registry=registry, AUTO=module.AUTO, LAUNCH=module.LAUNCH, __file__=module.__file__
    )
    return app, f"http://127.0.0.1:{port}"
