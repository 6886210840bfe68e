"""``dmvpn-operator``: run the kube-dmvpn operator (one replica, cluster-wide)."""

import asyncio
import socket
from datetime import timedelta
from typing import Annotated

import kopf
import typer

from dmvpn.controller import core
from dmvpn.controller.handlers import ControllerConfig, OperatorMemory, build_registry

app = typer.Typer(add_completion=False, help=__doc__)


async def run(
    config: ControllerConfig,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    liveness_endpoint: str | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (tests run it as a task against an API emulator)."""
    await kopf.operator(
        registry=build_registry(config),
        memo=OperatorMemory(config=config),
        clusterwide=True,
        standalone=True,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness_endpoint,
    )


@app.command()
def operator(
    metrics_port: Annotated[int, typer.Option(help="Prometheus endpoint port; 0 turns it off.")] = 8080,
    metrics_address: Annotated[str, typer.Option(help="Address the metrics endpoint listens on.")] = "0.0.0.0",
    liveness: Annotated[
        str, typer.Option(help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz; empty: none.")
    ] = "http://0.0.0.0:8081/healthz",
    interval: Annotated[float, typer.Option(help="Seconds between checks of an object for changes.")] = 1.0,
    resync: Annotated[float, typer.Option(help="Seconds between full recomputations.")] = 60.0,
    stale_after: Annotated[int, typer.Option(help="Seconds after which an agent report is stale.")] = 180,
    cleanup_timeout: Annotated[int, typer.Option(help="Seconds a deleted object waits for the agents' cleanup.")] = 120,
    instance: Annotated[str, typer.Option(envvar="POD_NAME", help="Name in Events' reportingInstance.")] = "",
    verbose: Annotated[bool, typer.Option(help="Log every handler run.")] = False,
    debug: Annotated[bool, typer.Option(help="Log kopf internals and API calls.")] = False,
) -> None:
    """Run the operator against the cluster of KUBECONFIG, or in-cluster with its service account."""
    kopf.configure(verbose=verbose, debug=debug)
    config = ControllerConfig(
        rules=core.Config(
            stale_after=timedelta(seconds=stale_after), cleanup_timeout=timedelta(seconds=cleanup_timeout)
        ),
        interval=interval,
        resync=resync,
        metrics_port=metrics_port or None,
        metrics_address=metrics_address,
        instance=instance or socket.gethostname(),
    )
    asyncio.run(run(config, liveness_endpoint=liveness or None))


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
