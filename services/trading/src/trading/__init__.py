"""The trading service."""
