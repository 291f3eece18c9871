"""The long-running programs: the daemon, the demo, the simulator, the embedded Postgres."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import attrs
import trio

from orchestrator import logs, views
from orchestrator.cli._command import EXIT_AUDIT_FAILED, EXIT_OK, CliError, Subparsers, database_url
from orchestrator.db import embedded_server_running, stop_embedded_server
from orchestrator.settings import Settings
from orchestrator.simulator import add_simulator_flags, simulator_config


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "url":
        print(database_url(settings))  # noqa: T201
        return EXIT_OK
    if settings.database_url:
        raise CliError("DATABASE_URL is set: that server is not ours to stop")
    stopped = stop_embedded_server(settings.home)
    views.say("embedded Postgres stopped" if stopped else "no embedded Postgres was running")
    return EXIT_OK


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from orchestrator import daemon  # noqa: PLC0415  (only `run` pays for the daemon)

    logs.configure(settings.log_level, settings.log_format)
    url = database_url(settings)
    trio.run(daemon.serve, settings, url)
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator import demo  # noqa: PLC0415  (only the demo pays for it)

    settings = attrs.evolve(
        settings,
        job_deadline_s=args.deadline,
        poll_initial_s=0.1,
        poll_max_s=1.0,
        scan_interval_s=1.0,
        grace_s=1.0,
        cancel_timeout_s=2.0,
        replicate_model="sim/image",
    )
    started_here = not settings.database_url and not embedded_server_running(settings.home)
    url = database_url(settings)
    log_path = Path(settings.home).expanduser() / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = trio.run(
            functools.partial(
                demo.run,
                settings,
                url,
                console=views.console(),
                log_path=log_path,
                scale=args.scale,
            )
        )
    finally:
        if started_here:
            stop_embedded_server(settings.home)
    return EXIT_OK if ok else EXIT_AUDIT_FAILED


def cmd_simulate_provider(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.simulator import serve_simulator  # noqa: PLC0415

    logs.configure(settings.log_level, settings.log_format)
    try:
        config = simulator_config(args)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(serve_simulator, config, host=args.host, port=args.port)
            )
            views.say(f"simulated provider listening on {url}")

    trio.run(main)
    return EXIT_OK


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the daemon and the simulator through a realistic burst, then audit"
    )
    p.add_argument(
        "--deadline", type=float, default=5.0, help="job deadline for the demo (default 5 s)"
    )
    p.add_argument("--scale", type=int, default=1, help="multiply the ordinary traffic")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    p.add_argument("--deadline", type=float, help="seconds a job may wait on the provider")
    p.add_argument("--provider-url", help="provider base URL (REPLICATE_API_BASE)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "simulate-provider", help="serve a Replicate-compatible simulator on loopback"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8090, help="port to listen on (default: 8090)")
    add_simulator_flags(p)
    p.set_defaults(func=cmd_simulate_provider)

    p = sub.add_parser("db", help="the embedded Postgres: show its URL or stop it")
    p.add_argument(
        "action", choices=("url", "stop"), help="print its URL, or stop the server we started"
    )
    p.set_defaults(func=cmd_db)
