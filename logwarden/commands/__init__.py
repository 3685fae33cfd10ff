"""Commands beside `run`: `replay` (a log read once) and `warm` (URL lists)."""
