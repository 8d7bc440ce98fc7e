"""Shared auth tables, migrations, auth logic and service kit."""
