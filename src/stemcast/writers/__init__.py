"""File-format writers: batch writers and streaming writers (open, append frames, close)."""
