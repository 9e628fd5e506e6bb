"""``python -m callrec``: the same as the ``callrec`` command."""

from callrec.cli import main

main()
