"""A throwaway PostgreSQL server from Debian's binaries, for the test suite and the benchmarks.

One server in a temporary folder, on a free loopback port, with durability off (fsync) since
nothing outlives it. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (``runuser``). ``sh scripts/ensure_postgres.sh`` installs the binaries.
"""

from __future__ import annotations

import glob
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

import psycopg
from psycopg import sql

__all__ = ["INSTALL_HINT", "PgServer", "find_bin_dir"]

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
        settings: Server settings (``-c name=value``) over the defaults, e.g. a larger
            ``shared_buffers`` for a benchmark.
    """

    def __init__(self, bin_dir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.bin_dir = bin_dir
        self.settings = dict(settings or {})
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
        settings = {
            "listen_addresses": "127.0.0.1",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "64MB",
            **self.settings,
        }
        opts = f"-p {self.port} -k {self.folder} " + " ".join(
            f"-c {k}={v}" for k, v in settings.items()
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

    def cpu_seconds(self) -> float:
        """CPU seconds the server's processes have used so far (exited backends included).

        Read from ``/proc``: the postmaster's own and its reaped children's times, plus every
        live child's. On a machine shared with other work, CPU time is steadier than wall time.
        """
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(entry) == pid:
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif int(fields[1]) == pid:
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def url(self, database: str = "postgres", *, driver: str = "postgresql+psycopg") -> str:
        """A URL of one of the server's databases."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "db") -> str:
        """A new empty database; returns its name."""
        name = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40] + "_" + uuid.uuid4().hex[:8]
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
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
