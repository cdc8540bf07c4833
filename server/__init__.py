"""curvscope server side: wire protocol, storage, FastAPI app, figures and CLI.

Importing this package is light: it imports neither FastAPI nor torch. The probe imports
:mod:`curvscope.server.protocol` for the wire messages; the app lives in
:mod:`curvscope.server.app` and is built by :func:`curvscope.server.app.create_app`.
"""

__all__: list[str] = []
