"""``python -m gruxp`` runs the command line."""

from .cli import main

main()
