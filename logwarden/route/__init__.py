"""Routing: the one admission path from a decided refresh to the peers or the bus."""
