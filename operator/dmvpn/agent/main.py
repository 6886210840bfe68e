"""``dmvpn-agent``: the node agent's entry point (standalone mode; Kubernetes mode: see docs/agent.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dmvpn.agent.agent import Agent, Transport
from dmvpn.agent.config import ConfigError, NodeConfig, load_standalone
from dmvpn.agent.control import DEFAULT_SOCKET, ControlServer
from dmvpn.agent.metrics import Metrics, MetricsObserver
from dmvpn.agent.nodestate import DEFAULT_NODE_STATE, node_state, write_node_state
from dmvpn.agent.views import COMMANDS
from dmvpn.dataplane import (
    ArrivalsConfig,
    Dataplane,
    HairpinConfig,
    NflogReader,
    TunnelConfig,
    UsageConfig,
    install_arrivals_rule,
    install_hairpin_rule,
    install_usage_counter,
    remove_arrivals_rule,
    remove_hairpin_rule,
    remove_usage_counter,
    rule_counters,
    usage_by_peer,
)
from dmvpn.ipsec.guard import GUARD_FAMILY, GUARD_TABLE, guard_counters_from
from dmvpn.ipsec.manager import IpsecManager
from dmvpn.ipsec.types import GuardCounters, ProtectionProfile, PskAuth, X509Auth
from dmvpn.nhrp.codec import Address
from dmvpn.nhrp.transport import NHRPTransport

log = logging.getLogger("dmvpn.agent")

DEFAULT_VICI = Path("/var/run/charon.vici")
DEFAULT_SECRETS = Path("/etc/dmvpn/secrets")
NFLOG_GROUP = 1  # the hub's hairpinned packets
ARRIVALS_NFLOG_GROUP = 2  # a spoke's first packet under each new SA


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dmvpn-agent", description="kube-dmvpn node agent (mGRE + NHRP + IPsec)")
    parser.add_argument("--standalone", type=Path, metavar="FILE", help="DMVPNHub/DMVPNSpoke documents (no Kubernetes)")
    parser.add_argument("--node", required=True, help="this node's name (the object whose spec.nodeName matches)")
    parser.add_argument("--vici-socket", type=Path, default=DEFAULT_VICI, help="charon's VICI socket")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help="control socket for dmvpnctl")
    parser.add_argument("--secrets-dir", type=Path, default=DEFAULT_SECRETS, help="secrets as DIR/<secret>/<key>")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    parser.add_argument("--node-state", type=Path, default=DEFAULT_NODE_STATE, help="CNI node-state file")
    parser.add_argument("--kubeconfig", type=Path, help="Kubernetes mode: kubeconfig (default: in-cluster, KUBECONFIG)")
    parser.add_argument("--namespace", help="Kubernetes mode: namespace of the Secrets (default: POD_NAMESPACE)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def tunnel_config(config: NodeConfig, underlay: str) -> TunnelConfig:
    return TunnelConfig(
        name=config.interface,
        local=config.nbma,
        underlay=underlay,
        address=config.tunnel,
        key=config.gre_key,
        mtu=config.mtu,
        ttl=config.ttl,
        on_demand=config.phase == 2 and not config.is_hub,
    )


def protection_profile(config: NodeConfig) -> ProtectionProfile:
    ipsec = config.ipsec
    auth: PskAuth | X509Auth
    if ipsec.psk is not None:
        auth = PskAuth(ipsec.psk)
    else:
        assert ipsec.certificate is not None and ipsec.private_key is not None and ipsec.ca is not None
        auth = X509Auth(ipsec.certificate, ipsec.private_key, ipsec.ca)
    return ProtectionProfile(
        local_nbma=config.nbma,
        auth=auth,
        role=config.role,
        ike_proposals=ipsec.ike_proposals,
        esp_proposals=ipsec.esp_proposals,
        dpd_delay=ipsec.dpd_delay,
        rekey_time=ipsec.rekey_time,
    )


def underlay_device(nbma: str) -> str:
    """The device holding our NBMA address (the tunnel binds to it, 'tunnel source')."""
    import json
    import subprocess

    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            if info.get("local") == nbma:
                return str(link["ifname"])
    raise ConfigError(f"no local device has the NBMA address {nbma} (spec.nbma.address)")


async def read_guard_counters(*, netns: str | None = None) -> GuardCounters | None:
    """What the IPsec guard dropped so far (None: not installed): its rules' counters, which the data plane
    reads over netlink, named by the guard's rule comments."""
    found = await rule_counters(GUARD_FAMILY, GUARD_TABLE, netns=netns)
    if found is None:
        return None
    return guard_counters_from({comment: (count.packets, count.bytes) for comment, count in found.items()})


def build_agent(config: NodeConfig, args: argparse.Namespace, observer: MetricsObserver | None) -> Agent:
    dataplane = Dataplane(tunnel_config(config, underlay_device(str(config.nbma))))
    ipsec = IpsecManager(protection_profile(config), socket_path=args.vici_socket) if config.ipsec.required else None

    def transport_factory(ifindex: int, on_packet: Callable[[bytes, Address], None]) -> Transport:
        return NHRPTransport.open(ifindex, on_packet)

    hairpin: Callable[[], Any] | None = None
    uninstall: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    if config.is_hub and config.phase == 3:
        hairpin_config = HairpinConfig(ifname=config.interface, group=NFLOG_GROUP)

        @contextlib.asynccontextmanager
        async def hairpin_reader() -> Any:
            await install_hairpin_rule(hairpin_config)
            async with NflogReader(NFLOG_GROUP) as reader:
                yield reader

        hairpin = hairpin_reader
        uninstall.append(("hairpin chain", lambda: remove_hairpin_rule(hairpin_config)))
    solicitations = dataplane.solicitations if config.phase == 2 and not config.is_hub else None
    arrivals: Callable[[], Any] | None = None
    if config.ipsec.required and not config.is_hub:
        # A spoke routes over an SA another spoke initiated once that spoke's first packet came in over it.
        arrivals_config = ArrivalsConfig(local=config.nbma, group=ARRIVALS_NFLOG_GROUP)

        @contextlib.asynccontextmanager
        async def arrivals_reader() -> Any:
            await install_arrivals_rule(arrivals_config)
            async with NflogReader(ARRIVALS_NFLOG_GROUP, copy_range=64) as reader:
                yield reader

        arrivals = arrivals_reader
        uninstall.append(("arrivals chain", lambda: remove_arrivals_rule(arrivals_config)))
    guard: Callable[[], Any] | None = None
    counters: Callable[[], Any] | None = None
    if config.ipsec.required:
        from dmvpn.ipsec.guard import install_guard, remove_guard, set_larval_drop

        counters = read_guard_counters

        async def guard() -> None:
            await install_guard(config.nbma)
            await set_larval_drop(False)

        uninstall.append(("ipsec guard", remove_guard))

    install_usage: Callable[[], Any] | None = None
    usage_counters: Callable[[], Any] | None = None
    if not config.ipsec.required and not config.is_hub and config.phase != 1:
        # No SA counts a shortcut's traffic: the data plane's per-peer counter does, for idle expiry.
        usage_config = UsageConfig(local=config.nbma)

        async def install_usage() -> None:
            await install_usage_counter(usage_config)

        async def usage_counters() -> dict[IPv4Address, int] | None:
            return await usage_by_peer(usage_config)

        uninstall.append(("traffic counter", lambda: remove_usage_counter(usage_config)))

    return Agent(
        config,
        dataplane,
        ipsec,
        transport_factory,
        hairpin=hairpin,
        solicitations=solicitations,
        arrivals=arrivals,
        install_guard=guard,
        guard_counters=counters,
        install_usage=install_usage,
        usage_counters=usage_counters,
        uninstall=uninstall,
        observer=observer,
    )


async def run(config: NodeConfig, args: argparse.Namespace) -> int:
    metrics = Metrics() if args.metrics_port is not None else None
    agent = build_agent(config, args, MetricsObserver(metrics) if metrics else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    control = ControlServer(args.socket, lambda command: COMMANDS[command](agent))
    await control.start()  # first, so dmvpnctl can watch a slow start
    try:
        await agent.start()
        write_node_state(args.node_state, node_state(config))
        if metrics is not None:
            metrics.attach(agent)
            metrics.serve(args.metrics_port)
        log.info("ready: control socket %s", args.socket)
        await stop.wait()
    finally:
        await control.close()
        await agent.close()
    return 0


def lean_log_records() -> None:
    """Skip what our log format never shows (the logging HOWTO's "Optimization" switches): the caller's
    file and line (a stack walk per record), thread and process names. Every event on a shortcut's path
    is logged: in the emulated test guest, profiled, one event's record took about a millisecond."""
    logging._srcfile = None  # the switch the HOWTO documents for this
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lean_log_records()
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack to stderr
    log.info("dmvpn-agent starting for node %s", args.node)
    if args.standalone is None:
        from dmvpn.agent.kube import run_agent  # Kubernetes mode (docs/operator.md: the agent contract)

        return asyncio.run(run_agent(args))
    try:
        config = load_standalone(args.standalone, args.node, args.secrets_dir)
    except ConfigError as error:
        print(f"dmvpn-agent: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(config, args))
    except ConfigError as error:
        print(f"dmvpn-agent: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
