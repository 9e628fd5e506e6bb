"""``python -m callrec.cli``."""

from callrec.cli import main

main()
