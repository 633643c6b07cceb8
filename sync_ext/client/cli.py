"""``davsync``: the reference sync client's command line.

``davsync login URL`` trades a password (asked once, or read from stdin) for a
device token and keeps only the token, in ``credentials.json`` under
``--home`` (``$DAVSYNC_HOME``, default ``~/.config/davsync``), readable by the
user alone. ``davsync sync DIR`` uses it; ``DAVSYNC_URL`` and ``DAVSYNC_TOKEN``
in the environment replace the file for unattended runs. A folder's sync state
lives in ``DIR/.davsync/`` (or ``--state-dir``) and is tied to the server and
account it was first synced with.

Exit codes: 0 done, 1 some items could not be synced, 2 credentials or usage,
3 the server could not be reached.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from sync_ext.client.index import Index
from sync_ext.client.progress import Reporter
from sync_ext.client.remote import ApiError, AuthError, ClientError, Offline, Remote, RetryPolicy, base_url
from sync_ext.client.runner import Runner
from sync_ext.client.syncer import Syncer

CREDENTIALS = "credentials.json"


class UsageProblem(click.ClickException):
    """Credentials or usage: exit code 2, like a refused token."""

    exit_code = 2


def _home(home: str | None) -> Path:
    if home:
        return Path(home)
    if env := os.environ.get("DAVSYNC_HOME"):
        return Path(env)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "davsync"


def _load_credentials(home: Path) -> dict[str, Any]:
    url, token = os.environ.get("DAVSYNC_URL"), os.environ.get("DAVSYNC_TOKEN")
    if url and token:
        return {"url": base_url(url), "token": token, "device": socket.gethostname()}
    try:
        doc: dict[str, Any] = json.loads((home / CREDENTIALS).read_text())
    except FileNotFoundError:
        raise UsageProblem(
            "not logged in: run `davsync login URL` (or set DAVSYNC_URL and DAVSYNC_TOKEN)"
        ) from None
    return doc


def _fail(exc: ClientError) -> NoReturn:
    click.echo(f"davsync: {exc}", err=True)
    sys.exit(3 if isinstance(exc, Offline) else 2)


@click.group()
@click.option("--home", envvar="DAVSYNC_HOME", help="Where login keeps its credentials.")
@click.pass_context
def main(ctx: click.Context, home: str | None) -> None:
    """davsync: two-way sync of a folder with a davserver account (delta transfer)."""
    ctx.obj = _home(home)


@main.command()
@click.argument("url")
@click.option("--user", help="Account name (asked for when not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--device", default=socket.gethostname(), show_default=True, help="This device's name.")
@click.pass_obj
def login(home: Path, url: str, user: str | None, password_stdin: bool, device: str) -> None:
    """Sign in once and keep a device token (never the password)."""
    url = base_url(url)
    token = os.environ.get("DAVSYNC_TOKEN")
    try:
        if token and not password_stdin:
            remote = Remote(url, token, retry=RetryPolicy(attempts=3))
            name = remote.account()["name"]
            token_id = None
        else:
            if user is None:
                user = click.prompt("User")
            if password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = click.prompt(f"Password for {user} at {url}", hide_input=True)
            remote = Remote(url, (user, password), retry=RetryPolicy(attempts=3))
            made = remote.create_token(f"davsync on {device}")
            token, token_id = made["token"], made["id"]
            name = user
    except AuthError:
        _fail(AuthError("the server refused the user name or password (or the token)"))
    except ClientError as exc:
        _fail(exc)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = home / CREDENTIALS
    fd = os.open(target.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "user": name, "token": token, "token_id": token_id, "device": device}, f)
    os.replace(target.with_suffix(".tmp"), target)
    click.echo(f"logged in to {url} as {name} (device {device}); credentials in {target}")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Sync once and exit (default: keep syncing).")
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: FOLDER/.davsync"
)
@click.option("--interval", default=5.0, show_default=True, help="Seconds between local scans.")
@click.option("--stats", "stats_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write what crossed the wire (bytes, requests, blocks) as JSON here.")  # fmt: skip
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@click.option("--parallel", default=4, show_default=True, help="Files transferred at once.")
@click.option("--retries", type=int, help="Attempts per request with --once (default 6); 0: forever.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_obj
def sync(
    home: Path,
    folder: Path,
    once: bool,
    state_dir: Path | None,
    interval: float,
    stats_file: Path | None,
    progress: bool | None,
    parallel: int,
    retries: int | None,
    quiet: bool,
) -> None:
    """Two-way sync of FOLDER with the account, then keep it in sync."""
    creds = _load_credentials(home)
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    state = (state_dir or root / ".davsync").resolve()
    reporter = Reporter(verbose=not quiet, bars=progress)
    remote = Remote(
        creds["url"],
        creds["token"],
        retry=RetryPolicy(attempts=(6 if retries is None else retries) if once else 0),
        on_wait=lambda why, delay: reporter.note(f"{why}; retrying in {delay:.1f} s"),
    )
    index = Index(state / "index.sqlite")
    runner: Runner | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        remote.cancelled.set()  # ends retry waits too: a stop never waits on the network
        if runner is not None:
            runner.wake()

    if not once:
        signal.signal(signal.SIGTERM, stop)
    try:
        _bind(index, creds["url"], remote)
        device = creds.get("device") or "davsync"
        syncer = Syncer(remote, index, root, state, device=device, reporter=reporter, parallel=parallel)
        if once:
            summary = syncer.sync()
            reporter.note(
                f"done: {summary.uploaded} up, {summary.downloaded} down, "
                f"{summary.deleted_remote + summary.deleted_local} deleted, "
                f"{summary.moved_remote + summary.moved_local} moved, {summary.conflicts} conflicts"
            )
            code = 1 if summary.errors else 0
        else:
            runner = Runner(syncer, scan_interval=interval)
            runner.run()
            if runner.fatal is not None:
                raise runner.fatal
            code = 0
    except ClientError as exc:
        if not remote.cancelled.is_set():
            _fail(exc)
        code = 0  # stopped (SIGTERM) while waiting for the server
    except KeyboardInterrupt:
        click.echo("davsync: interrupted", err=True)
        code = 130
    finally:
        if stats_file is not None:
            stats_file.write_text(json.dumps(remote.traffic.as_dict()))
        index.close()
        remote.close()
    sys.exit(code)


def _bind(index: Index, url: str, remote: Remote) -> None:
    """Tie the state folder to one server and account: mixing two would delete files."""
    try:
        account = remote.account()["name"]
    except ApiError as exc:
        raise AuthError(f"cannot read the account: {exc}") from None
    key = f"{url} {account}"
    known = index.get_meta("bound_to")
    if known is None:
        index.set_meta("bound_to", key)
    elif known != key:
        raise UsageProblem(
            f"this folder is synced with {known}, not {key}: use another folder or --state-dir"
        )


@main.command()
@click.pass_obj
def logout(home: Path) -> None:
    """Revoke this device's token on the server and forget it."""
    creds = _load_credentials(home)
    if creds.get("token_id") is not None:
        remote = Remote(creds["url"], creds["token"], retry=RetryPolicy(attempts=3))
        try:
            remote.revoke_token(int(creds["token_id"]))
        except ClientError as exc:
            click.echo(f"davsync: could not revoke the token on the server: {exc}", err=True)
    (home / CREDENTIALS).unlink(missing_ok=True)
    click.echo("logged out")


if __name__ == "__main__":
    main()
