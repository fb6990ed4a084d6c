"""Lifecycle automation and the ``shopserve`` command line."""
