"""`hetvc fit`, `hetvc example` (filled in by the real-data work)."""

COMMANDS = []
