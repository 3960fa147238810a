"""A throwaway PostgreSQL server for the test suite, from Debian's binaries.

One server per test session (per xdist worker), on a free loopback port, its data directory in a
temporary folder, with durability off (fsync) since nothing outlives the session. PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` user (``runuser``). A missing
installation fails the tests with what to run; it never skips them.
"""

from __future__ import annotations

import glob
import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv

__all__ = ["PgServer", "find_bin_dir", "load_frames"]

INSTALL_HINT = "run `sh scripts/ensure_postgres.sh` (as root) to install Debian's postgresql"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb`` (None when none)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not found:
        return None
    return max(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """A PostgreSQL server in a temporary folder; :meth:`start` it, then :meth:`stop` it.

    Args:
        bin_dir: Where ``initdb``, ``pg_ctl`` and ``postgres`` are.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
        self.data = self.folder / "data"
        self.port = 0
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> PgServer:
        """Initialise a cluster and start the server on a free port; wait until it answers."""
        if self._as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self.port = _free_port()
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=100 -c shared_buffers=64MB"
        )
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", opts, "-w", "-t", "60", "start")
        self._watch(os.getpid())
        return self

    def _watch(self, owner: int) -> None:
        """Stop the server when ``owner`` dies, even by SIGKILL (no teardown runs then)."""
        stop = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        if self._as_root:
            stop = ["runuser", "-u", "postgres", "--", *stop]
        script = (
            f"while kill -0 {owner} 2>/dev/null; do sleep 2; done; "
            f"{' '.join(stop)} >/dev/null 2>&1; rm -rf {self.folder}"
        )
        subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop the server at once and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres", *, driver: str = "postgresql+psycopg") -> str:
        """A URL of one of the server's databases."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "db") -> str:
        """A new empty database; returns its name."""
        name = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40] + "_" + uuid.uuid4().hex[:8]
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return name

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until a connection succeeds."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url(driver="postgresql"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _pg_type(series: pd.Series, ts_type: str) -> str:
    kind = series.dtype.kind
    if kind == "M":
        return ts_type
    if kind == "b":
        return "boolean"
    if kind in "iu":
        return "bigint"
    if kind == "f":
        return "double precision"
    return "text"


def _csv(frame: pd.DataFrame) -> bytes:
    """The frame as CSV by Arrow's writer (pandas' is ten times slower); times as UTC with a Z."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            utc = table[i].cast(pa.timestamp("us", tz="UTC"), safe=False)  # to microseconds
            table = table.set_column(i, field.name, utc)
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False))
    return out.getvalue()


def load_frames(
    url: str, tables: Mapping[str, pd.DataFrame], *, ts_type: str = "timestamptz"
) -> None:
    """Create ``tables`` in the database ``url`` names and fill them with ``COPY``.

    Args:
        url: A ``postgresql+psycopg://`` or ``postgresql://`` URL.
        tables: Table name -> frame; naive datetime columns hold UTC.
        ts_type: ``timestamptz`` or ``timestamp`` for the datetime columns. Values are sent in UTC
            with a ``Z``, so the session's time zone does not move them.
    """
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        for name, frame in tables.items():
            cols = ", ".join(f'"{c}" {_pg_type(frame[c], ts_type)}' for c in frame.columns)
            names = ", ".join(f'"{c}"' for c in frame.columns)
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')  # type: ignore[arg-type]
            conn.execute(f'CREATE TABLE "{name}" ({cols})')  # type: ignore[arg-type]
            with conn.cursor().copy(
                f'COPY "{name}" ({names}) FROM STDIN WITH (FORMAT csv)'  # type: ignore[arg-type]
            ) as copy:
                copy.write(_csv(frame))
            # Statistics now, as a loading job would: without them the planner guesses a join.
            conn.execute(f'ANALYZE "{name}"')  # type: ignore[arg-type]
