"""The shared auth tables (better-auth compatible) and their migration tree."""
