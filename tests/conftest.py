"""Fixtures shared by every package's tests: a real PostgreSQL server the suite starts itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import INSTALL_HINT, PgServer, find_bin_dir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session (per xdist worker), stopped at its end."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(f"PostgreSQL binaries not found under /usr/lib/postgresql: {INSTALL_HINT}")
    server = PgServer(bin_dir)
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg``) of a new database for one test module."""
    name = pg_server.create_database(request.module.__name__.rsplit(".", 1)[-1])
    return pg_server.url(name)


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one chDB path of the session (chDB embeds one server per process, on one path)."""
    return f"chdb:///{tmp_path_factory.mktemp('chdb') / 'db'}"
