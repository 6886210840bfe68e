"""One strongSwan charon per lab site, each in its namespace with its own /run (pid file, vici socket).

charon's pid file and default vici socket live at fixed paths under /run. ``ip netns exec`` already
gives each command a private mount namespace, so bind-mounting the site's run directory over /run
there keeps the charons apart without touching the host's /run.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from dmvpn.ipsec.plugins import charon_load_setting
from dmvpn.lab.topology import Lab, LabError, Site

CHARON = "/usr/lib/ipsec/charon"

# The plugins the product's charon loads (dmvpn.ipsec.plugins), not every installed one; the included
# plugin files still give their settings.
STRONGSWAN_CONF = f"""\
charon {{
  load_modular = no
  load = {charon_load_setting()}
  install_routes = no
  retransmit_timeout = 1.0
  retransmit_tries = 4
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    vici {{
      socket = unix:///run/charon.vici
    }}
  }}
  filelog {{
    lab {{
      path = /run/charon.log
      time_format = %H:%M:%S
      time_add_ms = yes
      flush_line = yes
      default = 1
      ike = 1
      knl = 1
    }}
  }}
}}
"""


def start_charon(lab: Lab, site: Site, timeout_s: float = 30.0) -> Path:
    """Start charon in the site's namespace; returns the path of its vici socket once it answers."""
    rundir = lab.site_rundir(site)
    conf = rundir / "strongswan.conf"
    conf.write_text(STRONGSWAN_CONF)
    script = f"mount --bind {rundir} /run && exec env STRONGSWAN_CONF=/run/strongswan.conf {CHARON}"
    site.ns.popen("sh", "-c", script, log=rundir / "charon.stdout")
    vici = rundir / "charon.vici"
    _wait_for_socket(vici, timeout_s, rundir)
    return vici


def _wait_for_socket(path: Path, timeout_s: float, rundir: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.2)
    log = (rundir / "charon.stdout").read_text(errors="replace")[-2000:] if (rundir / "charon.stdout").exists() else ""
    raise LabError(f"charon did not open {path} within {timeout_s} s; its output:\n{log}")


def load_gre_trap_policy(vici: Path, site: Site, psk: str, conn: str = "dmvpn-trap", unique: str | None = None) -> None:
    """FRR's way to protect an mGRE cloud with stock strongSwan (shared/notes/lab.md): one connection to any
    peer whose CHILD_SA protects GRE in transport mode with ``start_action = trap``, a wildcard trap policy,
    so each kernel acquire (a GRE packet to an NBMA address without an SA) starts IKE towards it. The
    proposals are the ones our agent uses by default; the PSK applies to any peer. ``unique``: swanctl's
    ``connections.<conn>.unique`` (charon's default when None)."""
    import vici as vici_client  # the lab's reference setup, not the product's ipsec package

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30.0)
        sock.connect(str(vici))
        session = vici_client.Session(sock)
        session.load_shared({"id": "lab-psk", "type": "IKE", "data": psk, "owners": []})
        session.load_conn(
            {
                conn: {
                    "version": "2",
                    "local_addrs": [str(site.nbma)],
                    "remote_addrs": ["%any"],
                    "proposals": ["aes256gcm16-prfsha256-ecp256"],
                    "mobike": "no",
                    **({"unique": unique} if unique else {}),
                    "local": {"auth": "psk", "id": str(site.nbma)},
                    "remote": {"auth": "psk"},
                    "children": {
                        "gre": {
                            "mode": "transport",
                            "local_ts": ["dynamic[gre]"],
                            "remote_ts": ["dynamic[gre]"],
                            "esp_proposals": ["aes256gcm16-ecp256"],
                            "start_action": "trap",
                        }
                    },
                }
            }
        )
