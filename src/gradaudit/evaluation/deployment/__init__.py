"""Audit a deployment in one command (see :mod:`.config`, :mod:`.plan`, :mod:`.run`)."""
