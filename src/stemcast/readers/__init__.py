"""File-format readers, one package per format, each with the reference library's API."""
