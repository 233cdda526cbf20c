"""BOute command line and shared errors."""
