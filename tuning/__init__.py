"""tuning package (filled by later issues)."""
