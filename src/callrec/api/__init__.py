"""The HTTP API of ``callrec serve`` (FastAPI): ``create_app(service)`` in ``callrec.api.app``."""
