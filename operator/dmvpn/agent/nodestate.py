"""The node-state file the CNI plugin reads (schema: docs/cni.md, version 1)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dmvpn.agent.config import NodeConfig

DEFAULT_NODE_STATE = Path("/run/dmvpn/node-state.json")
SCHEMA_VERSION = 1


def node_state(config: NodeConfig) -> dict[str, Any]:
    """Pod CIDRs are the site prefixes; overlay prefixes are what pods reach through the tunnel."""
    overlay: list[str] = [str(config.tunnel_network)]
    for prefix in (
        *config.summary_prefixes,
        *(p for hub in config.hubs for p in (*hub.summary_prefixes, *hub.site_prefixes)),
    ):
        if str(prefix) not in overlay:
            overlay.append(str(prefix))
    for peer in config.peer_spokes:
        overlay += [str(p) for p in peer.site_prefixes if str(p) not in overlay]
    return {
        "version": SCHEMA_VERSION,
        "node": config.node,
        "tunnelInterface": config.interface,
        "podCIDRs": [str(prefix) for prefix in config.site_prefixes],
        "overlayPrefixes": overlay,
        "mtu": config.mtu,
    }


def write_node_state(path: Path, state: dict[str, Any]) -> bool:
    """Write atomically (rename), so the plugin never reads half a file; False if unchanged."""
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".node-state.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
