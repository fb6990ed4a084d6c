"""``python -m pipeline`` runs the ``shopserve`` command line."""

from pipeline.cli import main

main()
