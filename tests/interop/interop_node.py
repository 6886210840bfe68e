"""A lab-side NHRP node: our ``Engine`` + ``NHRPTransport`` on a site's mGRE device (test harness code).

Run inside a site's namespace as ``python interop_node.py CONFIG.json``. It mirrors cache changes into
the kernel (neighbours and routes through pyroute2, as a data plane would), reports hairpinned packets to
the engine when it is a hub (an AF_PACKET socket for IPv4 on the tunnel: a packet that came in by the
tunnel for another tunnel destination), and writes its state (cache, NHS states, resolutions, counters)
as JSON to ``state`` after every change. Commands come on stdin, one a line: ``resolve ADDRESS``,
``quit``. Not product code: the product's driver is the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute

from dmvpn.nhrp.cache import CacheEntry, ChangeKind, EntryType
from dmvpn.nhrp.codec import Address
from dmvpn.nhrp.engine import (
    Action,
    CacheChanged,
    Engine,
    EngineConfig,
    NATAddressChanged,
    NHSConfig,
    NHSStateChanged,
    ResolutionDone,
    ResolutionFailed,
    Send,
)
from dmvpn.nhrp.transport import NHRPTransport

ETH_P_IP = 0x0800
NOT_INSTALLED = frozenset({EntryType.LOCAL, EntryType.NEGATIVE})
NUD_PERMANENT = 0x80
SCOPE_LINK = 253
RTNH_F_ONLINK = 4


def engine_config(cfg: dict[str, Any]) -> EngineConfig:
    secret = cfg.get("secret")
    return EngineConfig(
        protocol_address=ip_address(cfg["tunnel_ip"]),
        nbma_address=ip_address(cfg["nbma"]),
        nhs=tuple(NHSConfig(nbma=ip_address(nbma)) for nbma in cfg.get("nhs", ())),
        site_prefixes=tuple(ip_network(prefix) for prefix in cfg.get("site_prefixes", ())),
        server=bool(cfg.get("server", False)),
        holding_time=int(cfg.get("holding_time", 7200)),
        auth_secret=secret.encode() if secret else None,
        max_cache_entries=int(cfg.get("max_cache_entries", 65536)),
    )


class KernelMirror:
    """Cache entries -> kernel neighbours (next hop -> NBMA) and routes (prefix via next hop), applied in
    order by one task through pyroute2's AsyncIPRoute (the sync API cannot run inside an event loop)."""

    def __init__(self, dev: str, enabled: bool) -> None:
        self.enabled = enabled
        self.ifindex = socket.if_nametoindex(dev)
        self.queue: asyncio.Queue[tuple[ChangeKind, CacheEntry]] = asyncio.Queue()
        self.errors: list[str] = []
        self.applied = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled:
            self.task = asyncio.get_running_loop().create_task(self.run())

    def apply(self, kind: ChangeKind, entry: CacheEntry) -> None:
        if self.enabled and entry.type not in NOT_INSTALLED and entry.next_hop is not None:
            self.queue.put_nowait((kind, entry))

    async def run(self) -> None:
        ipr = AsyncIPRoute()
        await ipr.setup_endpoint()
        try:
            while True:
                kind, entry = await self.queue.get()
                try:
                    await self.install(ipr, kind, entry)
                    self.applied += 1
                except Exception as error:  # harness: record, keep going
                    self.errors.append(f"{kind} {entry.prefix}: {error}")
        finally:
            ipr.close()

    async def install(self, ipr: Any, kind: ChangeKind, entry: CacheEntry) -> None:
        prefix, next_hop = str(entry.prefix), str(entry.next_hop)
        host = entry.prefix.prefixlen == entry.prefix.max_prefixlen and entry.prefix.network_address == entry.next_hop
        if kind == ChangeKind.REMOVED:
            with contextlib.suppress(Exception):
                await ipr.route("del", dst=prefix, oif=self.ifindex)
            if host:
                with contextlib.suppress(Exception):
                    await ipr.neigh("del", dst=next_hop, ifindex=self.ifindex, family=socket.AF_INET)
            return
        if entry.nbma is not None:
            await ipr.neigh(
                "replace", dst=next_hop, lladdr=str(entry.nbma), ifindex=self.ifindex, state=NUD_PERMANENT,
                family=socket.AF_INET,
            )  # fmt: skip
        if host:
            await ipr.route("replace", dst=prefix, oif=self.ifindex, scope=SCOPE_LINK)
        else:
            await ipr.route("replace", dst=prefix, gateway=next_hop, oif=self.ifindex, flags=RTNH_F_ONLINK)


class Node:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.dev = cfg.get("dev", "gre1")
        self.engine = Engine(engine_config(cfg))
        self.mirror = KernelMirror(self.dev, bool(cfg.get("mirror", True)))
        self.state_path = Path(cfg["state"])
        self.hairpin_net = ip_network(cfg["hairpin_net"]) if cfg.get("hairpin_net") else None
        self.own = ip_address(cfg["tunnel_ip"])
        self.nhs: dict[str, dict[str, Any]] = {}
        self.resolutions: list[dict[str, Any]] = []
        self.nat: str | None = None
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.dump_pending = False
        self.done = self.loop.create_future()
        self.transport = NHRPTransport.open(socket.if_nametoindex(self.dev), self.on_packet)
        self.sniffer: socket.socket | None = None

    def now(self) -> float:
        return self.loop.time()

    def start(self) -> None:
        self.mirror.start()
        self.transport.start(self.loop)
        if self.hairpin_net is not None:
            self.sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            self.sniffer.setblocking(False)
            self.sniffer.bind((self.dev, ETH_P_IP))
            self.loop.add_reader(self.sniffer.fileno(), self.on_ip_packet)
        self.loop.add_reader(sys.stdin.fileno(), self.on_stdin)
        self.run(self.engine.start(self.now()))

    # --- inputs -----------------------------------------------------------------------------------

    def on_packet(self, data: bytes, nbma: Address) -> None:
        self.run(self.engine.receive(data, nbma, self.now()))

    def on_ip_packet(self) -> None:
        assert self.sniffer is not None and self.hairpin_net is not None
        for _ in range(64):
            try:
                data, address = self.sniffer.recvfrom(2048)
            except BlockingIOError:
                return
            if address[2] == socket.PACKET_OUTGOING or len(data) < 20:
                continue
            dst = IPv4Address(data[16:20])
            if dst != self.own and dst in self.hairpin_net:  # came in by the tunnel, goes out by it
                self.run(self.engine.hairpin(data[:28], self.now()))

    def on_stdin(self) -> None:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            self.loop.remove_reader(sys.stdin.fileno())
            if not self.done.done():
                self.done.set_result(None)
            return
        words = line.split()
        if len(words) == 2 and words[0] == "resolve":
            self.run(self.engine.resolve(ip_address(words[1]), self.now()))

    def on_timer(self) -> None:
        self.timer = None
        self.run(self.engine.tick(self.now()))

    # --- outputs ----------------------------------------------------------------------------------

    def run(self, actions: list[Action]) -> None:
        changed = False
        for action in actions:
            if isinstance(action, Send):
                self.transport.send(action.nbma, action.data)
                continue
            changed = True
            if isinstance(action, CacheChanged):
                self.mirror.apply(action.kind, action.entry)
            elif isinstance(action, NHSStateChanged):
                self.nhs[str(action.nbma)] = {
                    "up": action.up,
                    "protocol": str(action.protocol) if action.protocol else None,
                    "reason": action.reason,
                }
            elif isinstance(action, ResolutionDone):
                entry = action.entry
                self.resolutions.append(
                    {"destination": str(action.destination), "ok": True, "prefix": str(entry.prefix),
                     "nbma": str(entry.nbma), "next_hop": str(entry.next_hop), "type": entry.type.value}
                )  # fmt: skip
            elif isinstance(action, ResolutionFailed):
                self.resolutions.append(
                    {"destination": str(action.destination), "ok": False, "reason": action.reason, "code": action.code}
                )
            elif isinstance(action, NATAddressChanged):
                self.nat = str(action.nbma) if action.nbma else None
        self.arm_timer()
        if changed or not self.dump_pending:
            self.schedule_dump()

    def arm_timer(self) -> None:
        deadline = self.engine.next_deadline()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if deadline is not None:
            self.timer = self.loop.call_at(max(deadline, self.now()), self.on_timer)

    def schedule_dump(self) -> None:
        if not self.dump_pending:
            self.dump_pending = True
            self.loop.call_later(float(self.cfg.get("dump_interval", 0.2)), self.dump)

    def dump(self) -> None:
        self.dump_pending = False
        now = self.now()
        state = {
            "time": time.time(),
            "cache": [
                {
                    "prefix": str(e.prefix),
                    "type": e.type.value,
                    "nbma": str(e.nbma) if e.nbma else None,
                    "next_hop": str(e.next_hop) if e.next_hop else None,
                }
                for e in self.engine.cache
                if not e.expired(now)
            ],
            "nhs": self.nhs,
            "resolutions": self.resolutions,
            "nat": self.nat,
            "counters": self.engine.counters.snapshot(),
            "send_errors": self.transport.send_errors,
            "mirror_errors": self.mirror.errors[-20:],
            "mirror_applied": self.mirror.applied,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    def close(self) -> None:
        self.run(self.engine.shutdown(self.now()))
        self.dump()
        self.transport.close()


async def main(cfg: dict[str, Any]) -> None:
    node = Node(cfg)
    node.start()
    print("READY", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(node.done, float(cfg.get("lifetime", 900)))
    node.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
