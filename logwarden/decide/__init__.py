"""Deciding: which parsed lines mean "this node just stored a new copy" (one batch at a time)."""
