"""A throwaway PostgreSQL server (Debian's ``postgresql`` package), for a Prefect server that
runs as production runs it (``infra/docker-compose.yml``: Prefect on PostgreSQL).

``PostgresServer`` makes a cluster in a fresh folder, starts it on a free loopback port and
creates one database; ``stop()`` stops it and removes the folder. PostgreSQL refuses to run
as root, so under root its commands run as the ``postgres`` user (``runuser``). Tests skip
when the binaries are missing (``.ci/run`` installs the package).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from prefect_cluster import free_port


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` folder; None when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return Path(found[-1]) if found else None


class PostgresServer:
    """A PostgreSQL cluster of its own on 127.0.0.1:``port``, database ``prefect``."""

    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = binaries
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user must be able to reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="qwbatch-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect takes (``PREFECT_API_DATABASE_CONNECTION_URL``)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def _run(self, *args: str) -> None:
        command = [*(["runuser", "-u", "postgres", "--"] if self._as_postgres else []), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}{result.stderr}"

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
            "-l", str(self.root / "log"), "start",
        )  # fmt: skip
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "prefect")

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [
                    *(["runuser", "-u", "postgres", "--"] if self._as_postgres else []),
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop",
                ],
                capture_output=True,
                check=False,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
