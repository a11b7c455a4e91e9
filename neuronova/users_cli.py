"""`neuronova users …`: accounts and care lists, for operators at a shell."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.db import Role, ensure_schema, session_scope
from common.settings import Settings

app = typer.Typer(help="Webapp users: add them, put patients on a clinician's care list.")
console = Console(stderr=True)


def _database_url() -> str:
    url = Settings().resolved_database_url
    ensure_schema(url)
    return url


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The login name.")],
    role: Annotated[str, typer.Option(help="One of: " + ", ".join(Role) + ".")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a user. The password comes from stdin (never from the command line)."""
    from webapp.accounts import AccountError, add_user

    if not password_stdin:
        console.print("[red]give the password on standard input with --password-stdin[/red]")
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        with session_scope(_database_url()) as session:
            user = add_user(session, name, role, password)
    except AccountError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    console.print(f"[green]user {user.username} added ({user.role})[/green]")


@app.command("grant")
def grant(
    name: Annotated[str, typer.Argument(help="The user.")],
    patient: Annotated[str, typer.Option(help="The patient's MRN (PatientID).")],
) -> None:
    """Put a patient on a user's care list (clinicians see only these patients' studies)."""
    from webapp.accounts import AccountError, grant_patient

    try:
        with session_scope(_database_url()) as session:
            added = grant_patient(session, name, patient)
    except AccountError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    state = "granted" if added else "was already on the care list"
    console.print(f"[green]{patient}: {state} for {name}[/green]")


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The user.")],
    patient: Annotated[str, typer.Option(help="The patient's MRN (PatientID).")],
) -> None:
    """Take a patient off a user's care list."""
    from webapp.accounts import AccountError, revoke_patient

    try:
        with session_scope(_database_url()) as session:
            removed = revoke_patient(session, name, patient)
    except AccountError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{patient}: {'revoked' if removed else 'was not on the care list'} for {name}")


@app.command("list")
def list_users() -> None:
    """Users, their roles and care lists."""
    from sqlmodel import select

    from common.db import User
    from webapp.accounts import care_list

    table = Table("user", "role", "active", "care list")
    with session_scope(_database_url()) as session:
        for user in session.exec(select(User).order_by(User.username)):
            table.add_row(
                user.username, user.role, str(user.active), ", ".join(care_list(session, user))
            )
    Console().print(table)
