"""Temporary stand-ins for modules other helpers are writing (deleted once they land)."""
