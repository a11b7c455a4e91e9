"""Redis, from the Debian package redis-server: the alert channel, the stack's own.

It listens on loopback at `NEURONOVA_STACK_REDIS_PORT` (never the standard port: a Redis the
machine runs is neither used nor in the way), demands the password generated under secrets/
(`requirepass`: loopback is not a trust boundary), and keeps its data under its own folder
(append-only file), so it survives `stack down` and `up`.
"""

from __future__ import annotations

import shutil

import httpx
import redis

from common.errors import StackError
from common.settings import Settings
from neuronova.stack.component import LOOPBACK, Context, Health, write_atomically


def status_url(settings: Settings) -> str:
    """Where it listens, without its password (that is under `credentials`)."""
    return f"redis://{LOOPBACK}:{settings.stack_redis_port}/0"


def ports(settings: Settings) -> list[tuple[str, int]]:
    return [(LOOPBACK, settings.stack_redis_port)]


def credentials(settings: Settings) -> str:
    return settings.stack_redis_password()


def render_redis_config(settings: Settings, data_dir: str) -> str:
    """redis.conf: loopback only, password required, data in the component's folder."""
    return "\n".join(
        [
            f"bind {LOOPBACK}",
            f"port {settings.stack_redis_port}",
            "protected-mode yes",
            f"requirepass {settings.stack_redis_password()}",
            f"dir {data_dir}",
            "appendonly yes",
            "daemonize no",
            'logfile ""',
            # Nothing here needs them, and they would let a client rewrite the server's files.
            'rename-command CONFIG ""',
            'rename-command DEBUG ""',
            'rename-command MODULE ""',
            "",
        ]
    )


def prepare(ctx: Context) -> None:
    """The data folder and redis.conf (0600: it holds the password)."""
    data = ctx.home / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = render_redis_config(ctx.settings, str(data))
    write_atomically(ctx.home / "redis.conf", config, mode=0o600)


def command(ctx: Context) -> list[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not shutil.which(binary):
        raise StackError("redis-server not found: install the Debian package redis-server")
    return [binary, str(ctx.home / "redis.conf")]


def health(ctx: Context, _client: httpx.Client) -> Health:
    """It answers PING with the password (and its version to INFO)."""
    settings = ctx.settings
    client = redis.Redis(
        host=LOOPBACK,
        port=settings.stack_redis_port,
        password=settings.stack_redis_password(),
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    try:
        client.ping()
        version = str(client.info("server").get("redis_version", "")) or None
    except redis.RedisError as err:
        return Health(False, error=f"{type(err).__name__}: {err}")
    finally:
        client.close()
    return Health(True, version=version)
