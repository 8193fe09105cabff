"""``walbridge sf-emulator``: run the Salesforce API emulator, or tail the events it received.

Contract: ``emulator_app`` is a typer app with ``run`` (serve in the foreground until Ctrl-C, faults set by
flags) and ``events`` (print stored events as JSON lines; ``--tail`` keeps polling ``/emulator/events``).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Annotated

import httpx
import orjson
import typer

from walbridge.cli_common import handle_errors
from walbridge.emulator.auth import ConnectedApp
from walbridge.emulator.server import (
    DEFAULT_APP,
    DEFAULT_PORT,
    DEFAULT_PUBSUB_PORT,
    DEFAULT_URL,
    EmulatorConfig,
    EmulatorServer,
)

__all__ = ["emulator_app"]

emulator_app = typer.Typer(
    help="Salesforce API emulator (OAuth, Platform Event REST API, Pub/Sub API).", no_args_is_help=True
)


@emulator_app.command()
@handle_errors
def run(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = DEFAULT_PORT,
    metadata: Annotated[
        Path | None, typer.Option(help="SFDX package dir (default: the one shipped with walbridge).")
    ] = None,
    client_id: Annotated[
        str, typer.Option(help="Consumer key of the registered app.")
    ] = DEFAULT_APP.client_id,
    client_secret: Annotated[
        str, typer.Option(envvar="WALBRIDGE_EMULATOR_CLIENT_SECRET", help="Consumer secret.")
    ] = DEFAULT_APP.client_secret,
    run_as: Annotated[
        str, typer.Option(help="Run-As user of the client credentials flow.")
    ] = "integration@walbridge.example",
    certificate: Annotated[
        Path | None, typer.Option(help="PEM certificate/public key for JWT bearer.")
    ] = None,
    token_lifetime: Annotated[float, typer.Option(help="Seconds an access token lives.")] = 7200.0,
    latency_ms: Annotated[float, typer.Option(help="Added latency per Salesforce call.")] = 0.0,
    unavailable_rate: Annotated[float, typer.Option(help="Share of data calls answered 503.")] = 0.0,
    request_limit_rate: Annotated[
        float, typer.Option(help="Share answered 403 REQUEST_LIMIT_EXCEEDED.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
    hourly_publish_limit: Annotated[int, typer.Option(help="Events per rolling hour.")] = 250_000,
    daily_api_limit: Annotated[int, typer.Option(help="API calls per rolling 24 h.")] = 100_000,
    pubsub_port: Annotated[
        int, typer.Option(help="Port of the Pub/Sub API (gRPC); 0 picks a free one, -1 serves none.")
    ] = DEFAULT_PUBSUB_PORT,
    emulate_handler: Annotated[
        bool,
        typer.Option(help="Apply events as the deployed Apex handler would (GET /emulator/records)."),
    ] = False,
) -> None:
    """Serve the emulator in the foreground."""
    app = ConnectedApp(
        client_id,
        client_secret,
        run_as=run_as or None,
        certificate=certificate.read_text() if certificate else None,
    )
    config = EmulatorConfig(
        metadata_dir=metadata,
        apps=[app],
        token_lifetime=token_lifetime,
        latency_ms=latency_ms,
        unavailable_rate=unavailable_rate,
        request_limit_rate=request_limit_rate,
        seed=seed,
        hourly_publish_limit=hourly_publish_limit,
        daily_api_limit=daily_api_limit,
        handler=emulate_handler,
        pubsub_port=_pubsub_port(pubsub_port),
    )
    server = EmulatorServer(config, host=host, port=port)
    pubsub = f", Pub/Sub API on {server.pubsub_url}" if server.pubsub_url else ""
    typer.echo(f"Salesforce emulator on {server.url}{pubsub} (client_id={client_id})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _pubsub_port(port: int) -> int | None:
    """The port to serve the Pub/Sub API on; without the pubsub extra the default quietly means none."""
    if port < 0:
        return None
    missing = [m for m in ("grpc", "fastavro") if importlib.util.find_spec(m) is None]
    if port == DEFAULT_PUBSUB_PORT and missing:
        typer.echo("Pub/Sub API not served: it needs the pubsub extra (pip install 'walbridge[pubsub]')")
        return None
    return port


@emulator_app.command()
def events(
    url: Annotated[
        str, typer.Option(envvar="WALBRIDGE_EMULATOR_URL", help="Emulator base URL.")
    ] = DEFAULT_URL,
    after: Annotated[int, typer.Option(help="Start after this ReplayId.")] = 0,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this event object.")] = None,
    tail: Annotated[bool, typer.Option(help="Keep polling for new events.")] = False,
    interval: Annotated[float, typer.Option(help="Poll interval in seconds with --tail.")] = 0.5,
) -> None:
    """Print the emulator's events as JSON lines, in ReplayId order."""
    with httpx.Client(base_url=url, timeout=10) as client:
        while True:
            params: dict[str, str | int] = {"after": after, "limit": 1000}
            if event_type:
                params["type"] = event_type
            batch = client.get("/emulator/events", params=params).raise_for_status().json()["events"]
            for event in batch:
                typer.echo(orjson.dumps(event).decode())
                after = int(event["ReplayId"])
            if not batch and not tail:
                return
            if not batch:
                time.sleep(interval)
