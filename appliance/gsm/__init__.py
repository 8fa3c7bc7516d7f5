"""gsm package."""
