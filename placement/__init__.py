"""placement package (filled by later issues)."""
