"""Command line: ``logwarden run`` and ``logwarden check``, flags generated from config.SETTINGS."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from logwarden import __version__
from logwarden.config import (
    REPLAY,
    RUN,
    SETTINGS,
    WARM,
    Config,
    ConfigError,
    Needs,
    Setting,
    load_config,
)
from logwarden.ops.logs import setup as setup_logging

F = Callable[..., Any]


def _settings_options(command: str) -> Callable[[F], F]:
    """Decorate ``command`` with one option per setting it reads (``Setting.also``), all
    defaulting to "not given"; ``check`` takes ``run``'s."""
    return lambda func: _options(func, [s for s in SETTINGS
                                        if command in ("run", "check") or command in s.also])


def _options(func: F, settings: list[Setting]) -> F:
    for s in reversed(settings):
        help_text = s.help + (f" [{'|'.join(s.choices)}]" if s.choices else "")
        help_text += f" (env {s.env})"
        if s.kind is bool:
            flag = f"{s.flag}/--no-{s.flag[2:]}"
            func = click.option(flag, s.name, default=None, help=help_text)(func)
        else:
            func = click.option(s.flag, s.name, type=s.kind, multiple=s.multiple, default=None,
                                help=help_text, metavar=s.name.upper())(func)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False),
                        envvar="LOGWARDEN_CONFIG",
                        help="TOML file with settings (keys as the flags, '-' as '_').")(func)


def _load(config_file: str | None, flags: dict[str, Any], needs: Needs = RUN) -> Config:
    try:
        return load_config(flags, config_file, needs=needs, stdin=sys.stdin.read)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    click.echo(f"logwarden: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="logwarden")
def main() -> None:
    """Keep every node of an NGINX cache cluster fresh: tail the access log, refresh the peers."""


@main.command()
@_settings_options("run")
def run(config_file: str | None, **flags: Any) -> None:
    """Tail the access log and refresh the other peers. SIGTERM drains and exits 0."""
    config = _load(config_file, flags)
    setup_logging(config.log_level, config.log_format_output, config.log_libraries,
                  config.secrets)
    from logwarden.daemon import StartupError
    from logwarden.daemon import run as run_daemon

    try:
        code = run_daemon(config)
    except StartupError as exc:
        if config.log_level == "debug":
            logging.getLogger("logwarden").debug("start-up failed", exc_info=exc)
        _fail(str(exc))
    sys.exit(code)


@main.command()
@_settings_options("check")
def check(config_file: str | None, **flags: Any) -> None:
    """Validate the configuration and print the effective settings as TOML; start nothing."""
    config = _load(config_file, flags)
    for found in config.nginx_access_logs:
        click.echo(f"# {config.nginx_conf}: {found.describe()}", err=True)
    click.echo(config.to_toml(), nl=False)
    static = ", ".join(config.targets) or "no static peer"
    dynamic = " + --peers-file/--peers-dns" if config.peers_file or config.peers_dns else ""
    click.echo(f"# refreshes go to: {static}{dynamic}", err=True)
    click.echo(f"# positions file: {config.positions_path or 'off'}", err=True)
    click.echo(f"# {_verification(config)}", err=True)


def _verification(config: Config) -> str:
    """How bypass answers are judged: a peer that ignores the refresh answers 200 too."""
    if config.mode != "refresh" and not config.purge_then_refresh:
        return "refresh verification: none (purge mode sends no bypass request)"
    if not config.cache_status_header:
        return ("refresh verification off (cache_status_header = ''): any answer below 400 "
                "counts as ok")
    return (f"refreshes verified: ok only when the peer answers {config.cache_status_header}: "
            "BYPASS (else not_refreshed, or unverified without the header)")


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--only-missing", is_flag=True, help="Ask each node with a plain HEAD first and "
              "refresh only where it does not answer X-Cache-Status: HIT.")
@_settings_options("warm")
def warm(config_file: str | None, sources: tuple[str, ...], only_missing: bool,
         **flags: Any) -> None:
    """Fill every node's cache (this one's too) with the URLs of each SOURCE before clients
    ask: a file of URLs or paths, '-' for stdin, or a sitemap (index) file or URL. Exit 1
    when any URL failed on any node."""
    config = _load(config_file, flags, WARM)
    setup_logging(config.log_level, config.log_format_output, config.log_libraries,
                  config.secrets)
    from logwarden.commands.warm import warm as run_warm

    sys.exit(run_warm(config, sources, only_missing=only_missing, out=sys.stdout,
                      err=sys.stderr))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: each refresh, then {\"summary\": …}.")
@_settings_options("replay")
def replay(file: str, as_json: bool, config_file: str | None, **flags: Any) -> None:
    """Read FILE once and print the refresh each triggering line would send, then a summary
    (lines, malformed, triggers by status, refreshes after dedup). Sends nothing; no peer or
    --access-log needed (with --nginx-conf, --access-log picks the format)."""
    config = _load(config_file, flags, REPLAY)
    from logwarden.commands.replay import replay_file

    try:
        replay_file(config, file, click.echo, as_json=as_json)
    except OSError as exc:
        _fail(f"{file}: cannot be read: {exc.strerror}")
