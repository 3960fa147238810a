"""Alembic migrations of the experiment state store, run by :func:`lifecycle.store.migrate`."""
