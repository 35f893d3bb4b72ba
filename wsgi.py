"""WSGI entry point: patch with gevent before anything imports socket, ssl or requests."""

from gevent import monkey

monkey.patch_all()

from streamapp import create_app  # noqa: E402 - must come after patching

app = create_app()
