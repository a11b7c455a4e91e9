"""`neuronova stack up | down | status | install`: the local stack from the command line."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.errors import StackError
from common.settings import Settings
from neuronova.stack.supervisor import LocalStack

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Install, start, check and stop the local stack (Orthanc, Prefect server, …).",
    no_args_is_help=True,
)

_console = Console()
_errors = Console(stderr=True)


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Build the settings once for every stack command."""
    ctx.obj = LocalStack(Settings())


def _stack(ctx: typer.Context) -> LocalStack:
    stack = ctx.obj
    if not isinstance(stack, LocalStack):  # called without the callback, e.g. from another app
        stack = LocalStack(Settings())
    return stack


def _selection(only: str | None, component: list[str] | None) -> list[str] | None:
    """Merge `--only a,b` and repeated `--component a` into one list (None: all)."""
    names = [n.strip() for n in (only or "").split(",") if n.strip()]
    names += component or []
    return names or None


def _fail(err: StackError) -> typer.Exit:
    _errors.print(f"[red]stack error:[/red] {err}", markup=True, highlight=False)
    return typer.Exit(code=1)


def _print_status(status: dict[str, Any], as_json: bool, summary: bool = True) -> None:
    if as_json:
        typer.echo(json.dumps(status))
        return
    table = Table(title=f"NeuroNova stack ({status['stack_dir']})")
    for column in ("component", "state", "pid", "version", "url"):
        table.add_column(column)
    for name, detail in status["components"].items():
        state = {
            "up": "[green]up[/green]",
            "degraded": f"[yellow]degraded[/yellow] ({escape(str(detail['error']))})",
            "not answering": f"[yellow]not answering[/yellow] ({escape(str(detail['error']))})",
        }.get(detail["state"], "[red]down[/red]")
        table.add_row(name, state, str(detail["pid"] or ""), detail["version"] or "", detail["url"])
    _console.print(table)
    if summary:
        _console.print("[green]up[/green]" if status["up"] else "[red]not up[/red]")


@app.command()
def up(
    ctx: typer.Context,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated components, e.g. orthanc,prefect.")
    ] = None,
    component: Annotated[
        list[str] | None, typer.Option("--component", "-c", help="A component (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Install what is missing, start the components, wait until they answer."""
    names = _selection(only, component)
    try:
        status = _stack(ctx).up(names)
    except StackError as err:
        raise _fail(err) from err
    # A partial up (`--only orthanc`) succeeded even though the whole stack is not up.
    _print_status(status, as_json, summary=False)
    if not as_json:
        _console.print(f"[green]up[/green]: {', '.join(names or status['components'])}")


@app.command()
def down(
    ctx: typer.Context,
    only: Annotated[str | None, typer.Option(help="Comma-separated components.")] = None,
    component: Annotated[
        list[str] | None, typer.Option("--component", "-c", help="A component (repeatable).")
    ] = None,
) -> None:
    """Stop the components this stack started (by their PIDs)."""
    try:
        _stack(ctx).down(_selection(only, component))
    except StackError as err:
        raise _fail(err) from err
    _console.print("stack stopped")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show whether every component runs and answers; exit code 1 when not up."""
    result = _stack(ctx).status()
    _print_status(result, as_json)
    if not result["up"]:
        raise typer.Exit(code=1)


@app.command()
def install(ctx: typer.Context) -> None:
    """Install what the stack and the tests need: Debian packages, npm trees, OHIF (nothing is
    started; run once with the network, and neither `make demo` nor `make test` needs it again)."""
    try:
        packages = _stack(ctx).install()
    except StackError as err:
        raise _fail(err) from err
    _console.print(f"installed: {', '.join(packages)}, the npm packages and OHIF")
