"""A throw-away PostgreSQL server for tests: Debian's binaries, a data folder in a temporary
folder, TCP on 127.0.0.1 only, trust authentication, stopped and removed afterwards. Every
subprocess has a timeout."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROGRAMS = ("initdb", "pg_ctl", "postgres", "createdb")
INSTALL = "run `sudo make system-deps` (or `apt-get install postgresql`)"


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding PROGRAMS."""
    found = []
    for folder in Path("/usr/lib/postgresql").glob("*/bin"):
        version = re.fullmatch(r"\d+(\.\d+)?", folder.parent.name)
        if version and all((folder / name).is_file() for name in PROGRAMS):
            found.append((float(folder.parent.name), folder))
    return max(found)[1] if found else None


def server_user() -> pwd.struct_passwd:
    """Who runs the server: initdb and postgres refuse root, so under root the `postgres`
    user of Debian's package, else `nobody`; otherwise the current user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


def _run(user: pwd.struct_passwd, command: list[str], timeout: float) -> str:
    """Run a PostgreSQL program as `user`; its output, or an error with it."""
    switch = {} if user.pw_uid == os.geteuid() else {"user": user.pw_uid, "group": user.pw_gid,
                                                     "extra_groups": []}  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}, **switch,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@contextlib.contextmanager
def postgres(port: int, database: str = "mlflow", role: str = "mlflow") -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1:`port` with an empty `database` owned by `role`
    (trust authentication, fsync off); yields its SQLAlchemy URI, then stops it (pg_ctl stop
    -m fast) and removes its folder. Needs postgres_bin().

    The URI names its driver, psycopg2: SQLAlchemy 2.1 takes a bare postgresql:// to mean
    psycopg 3, and the project installs psycopg2-binary."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, INSTALL
    user = server_user()
    # Under /tmp itself: pytest's tmp_path sits in a folder only root may enter.
    folder = Path(tempfile.mkdtemp(prefix="digitlab-pg-"))
    os.chown(folder, user.pw_uid, user.pw_gid)
    data, log = folder / "data", folder / "server.log"
    try:
        _run(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", role, "--auth=trust",
                    "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C.UTF-8"], 120)  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c synchronous_commit=off"
        try:
            try:
                _run(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o",
                            options, "-w", "-t", "60", "start"], 90)  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                text = log.read_text() if log.exists() else "(no log)"
                raise RuntimeError(f"PostgreSQL did not start: {exc}\n{text[-3000:]}") from None
            _run(user, [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", role,
                        database], 60)  # fmt: skip
            yield f"postgresql+psycopg2://{role}@127.0.0.1:{port}/{database}"
        finally:
            if (data / "postmaster.pid").exists():
                _run(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t",
                            "60", "stop"], 90)  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
