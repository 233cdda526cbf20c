"""app package (filled by later issues)."""
