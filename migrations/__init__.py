"""OmniQ's Alembic migrations (installed as ``omniq._migrations``)."""
