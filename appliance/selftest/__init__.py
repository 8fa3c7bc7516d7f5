"""selftest package."""
