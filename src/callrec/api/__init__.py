"""The JSON API of ``callrec serve`` (FastAPI, under ``/api/v1``); assembled with the web in ``callrec.app``."""
