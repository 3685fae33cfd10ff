"""Command line: ``logwarden run``, ``check``, ``warm``, ``replay``, ``doctor`` and
``nginx-snippet``, flags generated from config.SETTINGS."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from logwarden import __version__
from logwarden.config import (
    DOCTOR,
    REPLAY,
    RUN,
    SETTINGS,
    SNIPPET,
    WARM,
    Config,
    ConfigError,
    Needs,
    Setting,
    load_config,
)
from logwarden.ops.logs import setup as setup_logging
from logwarden.parse.logformat import CACHING_VARIABLES

F = Callable[..., Any]


def _settings_options(command: str) -> Callable[[F], F]:
    """Decorate ``command`` with one option per setting it reads (``Setting.also``), all
    defaulting to "not given"; ``check``, ``doctor`` and ``nginx-snippet`` take ``run``'s
    (they check or print what ``run`` would do)."""
    return lambda func: _options(func, [s for s in SETTINGS if command in _AS_RUN
                                        or command in s.also])


_AS_RUN = ("run", "check", "doctor", "nginx-snippet")


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
        return load_config(flags, config_file, needs=needs,
                           stdin=None if sys.stdin.isatty() else sys.stdin.read)
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
    """Validate the configuration and print the effective settings as TOML, then a verdict
    on each caching location of the --nginx-conf that writes a followed log, and what the
    followed files' last lines show; start nothing. Exit 1 when a verdict is an error or
    none of a file's last lines parses with the format."""
    config = _load(config_file, flags)
    for found in config.nginx_access_logs:
        click.echo(f"# {config.nginx_conf}: {found.describe()}", err=True)
    click.echo(config.to_toml(), nl=False)
    static = ", ".join(config.targets) or "no static peer"
    dynamic = " + --peers-file/--peers-dns" if config.peers_file or config.peers_dns else ""
    click.echo(f"# refreshes go to: {static}{dynamic}", err=True)
    click.echo(f"# positions file: {config.positions_path or 'off'}", err=True)
    click.echo(f"# {_verification(config)}", err=True)
    click.echo(f"# {_uncacheable(config)}", err=True)
    for warning in config.warnings:
        click.echo(f"# warning: {warning}", err=True)
    from logwarden.commands.check import check_logs
    from logwarden.commands.nginx_side import verdicts

    said, judged = check_logs(config), verdicts(config)
    for verdict in judged:
        click.echo(f"# nginx {verdict.describe()}", err=True)
    for line in said.lines:
        click.echo(f"# {line}", err=True)
    if not said.ok or any(v.level == "error" for v in judged):
        sys.exit(1)


def _uncacheable(config: Config) -> str:
    """How answers NGINX did not store are told (README "Uncacheable answers")."""
    fmt = config.parser
    if fmt is not None and not {*CACHING_VARIABLES} & set(fmt.variables):
        how = ("learned (a URL MISSed again); log the caching headers to tell from the "
               "first line (README \"Uncacheable answers\")")
    else:
        how = "from the caching headers on each line"
    policy = config.cache_policy
    if policy is None:
        return f"uncacheable answers: {how}; proxy_cache_valid not known (no --nginx-conf)"
    ignored = ", ".join(sorted(policy.ignore_headers)) or "none"
    stored = ", ".join("any" if code is None else str(code)
                       for code in sorted(policy.valid, key=lambda c: c or 0)) or "none"
    return (f"uncacheable answers: {how}; proxy_ignore_headers: {ignored}; statuses "
            f"proxy_cache_valid stores: {stored}")


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


@main.command()
@_settings_options("doctor")
def doctor(config_file: str | None, **flags: Any) -> None:
    """Check every node (--self and the peers) live, before going live: on the canary
    (--doctor-url), a refresh must bypass the cache and be stored, a request without the
    refresh header must not bypass; in purge mode a purge must be accepted and refilled. One
    row per node with the fix; only the canary's cache entry changes. Exit 0 when every node
    passes, 1 otherwise."""
    config = _load(config_file, flags, DOCTOR)
    setup_logging(config.log_level, config.log_format_output)
    from logwarden.commands.doctor import DoctorError
    from logwarden.commands.doctor import doctor as run_doctor

    try:
        code = run_doctor(config, sys.stdout)
    except DoctorError as exc:
        _fail(str(exc))
    sys.exit(code)


@main.command("nginx-snippet")
@click.option("--cache-zone", metavar="ZONE", help="The keys_zone of the cached location, for "
              "the purge route [default: from --nginx-conf, else logwarden].")
@click.option("--cache-key", metavar="KEY", help="Its proxy_cache_key, for the variant and "
              "purge keys [default: from --nginx-conf, else $scheme$host$request_uri].")
@_settings_options("nginx-snippet")
def nginx_snippet(config_file: str | None, cache_zone: str | None, cache_key: str | None,
                  **flags: Any) -> None:
    """Print the NGINX lines every node needs for this cluster (peers' geo allow-list, the
    refresh secret's map, bypass, cache-status header, log format, variant classes, the purge
    route in purge mode), each section under the block to paste it in. The output holds the
    secret."""
    config = _load(config_file, flags, SNIPPET)
    from logwarden.commands.snippet import SnippetError, snippet

    try:
        text, warnings = snippet(config, cache_zone, cache_key)
    except SnippetError as exc:
        _fail(str(exc))
    for warning in warnings:
        click.echo(f"logwarden: warning: {warning}", err=True)
    click.echo(text, nl=False)
