"""The web of ``callrec serve``, for people: the UI (``/ui``), the public link pages (``/r/``), templates and
static files. It reads through ``callrec.api``'s route functions; ``callrec.api`` never imports it."""
