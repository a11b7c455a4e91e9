"""MariaDB, from the Debian package mariadb-server: the stack's own database server.

The tests keep their database here (one per session), and so can the demo when told to
(`NEURONOVA_DATABASE_URL` = `Settings.stack_mysql_url(...)`; its default stays SQLite). It
listens on loopback at `NEURONOVA_STACK_MYSQL_PORT` (never the standard port: a MariaDB or MySQL
the machine runs is neither used nor in the way) with its data under its own folder, so it
survives `stack down` and `up`. One account, `neuronova`, with the password generated under
secrets/, reaches it over TCP; root only through the server's own unix socket in that folder.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pymysql
from sqlalchemy import create_engine, text

from common.errors import StackError
from common.settings import STACK_MYSQL_USER, Settings
from neuronova.stack.component import LOOPBACK, Context, Health, write_atomically

_SBIN = ("/usr/sbin", "/usr/bin")
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def status_url(settings: Settings) -> str:
    """Where it listens, without its password (that is under `credentials`)."""
    return f"mysql+pymysql://{STACK_MYSQL_USER}@{LOOPBACK}:{settings.stack_mysql_port}"


def ports(settings: Settings) -> list[tuple[str, int]]:
    return [(LOOPBACK, settings.stack_mysql_port)]


def credentials(settings: Settings) -> dict[str, str]:
    return settings.stack_mysql_credentials()


def _find(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (f"{d}/{name}" for d in _SBIN if Path(f"{d}/{name}").exists()), None
        )
        if found:
            return found
    raise StackError(f"{names[0]} not found: install the Debian package mariadb-server")


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_init_sql(settings: Settings) -> str:
    """Run by the server at every start: the stack's account with its current password, and no
    anonymous account (the password may have been regenerated; the account must match it)."""
    account = settings.stack_mysql_credentials()
    user, password = _sql_string(account["username"]), _sql_string(account["password"])
    return "\n".join(
        [
            "DROP USER IF EXISTS ''@'localhost';",
            f"CREATE USER IF NOT EXISTS {user}@'127.0.0.1' IDENTIFIED BY {password};",
            f"ALTER USER {user}@'127.0.0.1' IDENTIFIED BY {password};",
            # The tests create and drop a database per session.
            f"GRANT ALL PRIVILEGES ON *.* TO {user}@'127.0.0.1' WITH GRANT OPTION;",
            "",
        ]
    )


def prepare(ctx: Context) -> None:
    """A data folder made once by mariadb-install-db, and init.sql (0600: it holds the password)."""
    data = ctx.home / "data"
    if not (data / "mysql").is_dir():
        data.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                _find("mariadb-install-db", "mysql_install_db"),
                "--no-defaults",
                f"--datadir={data}",
                f"--user={getpass.getuser()}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                # Only skips its look-up of this host's name, which fails where /etc/hosts is
                # missing (a bare Debian 12 root, a container): our accounts are by address
                # (127.0.0.1) and root's by socket, so no grant names a host.
                "--force",
            ],
            env={**os.environ, **env(ctx)},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-2000:]
            raise StackError(f"mariadb-install-db failed in {data}:\n{tail}")
    write_atomically(ctx.home / "init.sql", render_init_sql(ctx.settings), mode=0o600)


def command(ctx: Context) -> list[str]:
    home, settings = ctx.home, ctx.settings
    return [
        _find("mariadbd", "mysqld"),
        "--no-defaults",
        f"--datadir={home / 'data'}",
        f"--bind-address={LOOPBACK}",
        f"--port={settings.stack_mysql_port}",
        f"--socket={home / 'mysqld.sock'}",
        f"--pid-file={home / 'mysqld.pid'}",
        f"--init-file={home / 'init.sql'}",
        "--skip-name-resolve",
        "--character-set-server=utf8mb4",
        # MariaDB 11.6.2+ (Debian 13's 11.8) turns this on by default: a transaction that locks
        # a row another one changed since it read it fails (1020) instead of going on. On here
        # for 10.11 too (it has the switch since 10.11.8; `loose-`: ignored where unknown), so
        # that races answer the same on both Debian versions (common/transactions.py).
        "--loose-innodb-snapshot-isolation=ON",
        # mariadbd refuses to run as root unless told which user it is.
        f"--user={getpass.getuser()}",
    ]


def env(_ctx: Context) -> dict[str, str]:
    """mariadbd makes its files 0660 and folders 0700 unless told otherwise: the owner only."""
    return {"UMASK": "0600", "UMASK_DIR": "0700"}


def health(ctx: Context, _client: httpx.Client) -> Health:
    """The stack's account logs in over TCP with its password and asks for the version."""
    account = ctx.settings.stack_mysql_credentials()
    try:
        connection = pymysql.connect(
            host=LOOPBACK,
            port=ctx.settings.stack_mysql_port,
            user=account["username"],
            password=account["password"],
            connect_timeout=2,
        )
    except pymysql.MySQLError as err:
        return Health(False, error=f"{type(err).__name__}: {err.args[-1] if err.args else err}")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            row = cursor.fetchone()
    finally:
        connection.close()
    return Health(True, version=str(row[0]) if row else None)


def create_database(server_url: str, name: str) -> None:
    """A database (utf8mb4) on a MySQL or MariaDB server, made if missing (the stack's own:
    `settings.stack_mysql_url()`, once it runs)."""
    _on_server(
        server_url, f"CREATE DATABASE IF NOT EXISTS {_database_name(name)} CHARACTER SET utf8mb4"
    )


def drop_database(server_url: str, name: str) -> None:
    """Drop a database the tests or a benchmark made on a server that outlives them."""
    _on_server(server_url, f"DROP DATABASE IF EXISTS {_database_name(name)}")


def _database_name(name: str) -> str:
    if not _DATABASE_NAME.fullmatch(name):
        raise StackError(f"not a database name: {name!r} (letters, digits, _)")
    return name


def _on_server(server_url: str, statement: str) -> None:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def on_stack_mysql(settings: Settings, database: str = "neuronova") -> Settings:
    """The same settings with `database` on the stack's MariaDB as their database (create it
    with `create_database` once the server runs)."""
    return settings.model_copy(update={"database_url": settings.stack_mysql_url(database)})
