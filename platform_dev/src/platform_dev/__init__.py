"""Development only: the embedded Postgres and `platform-db dev`."""
