"""The arrivals chain (a spoke's first GRE packet under each new inbound SA, to NFLOG): rendering (pure).
That the kernel logs exactly such a packet, with real ESP, is checked by the agent's kernel test
(tests/agent/test_agent_kernel.py: the responder's ``sa-ready`` comes from it)."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.dataplane import ArrivalsConfig
from dmvpn.dataplane.arrivals import marker, render_ruleset, rule_body

LOCAL = IPv4Address("192.0.2.12")


def test_the_rule_logs_decrypted_gre_to_us_once_per_source_and_spi() -> None:
    body = rule_body(ArrivalsConfig(LOCAL))
    assert body.startswith("meta nfproto ipv4 ip daddr 192.0.2.12 ip protocol gre meta secpath exists ")
    assert "ip saddr . ipsec in spi != @arrivals_sas add @arrivals_sas { ip saddr . ipsec in spi }" in body
    assert body.endswith("log group 2 snaplen 20 queue-threshold 1")


def test_the_script_rewrites_only_our_chain_and_set_on_the_input_hook() -> None:
    script = render_ruleset(ArrivalsConfig(LOCAL), chain_exists=True, set_exists=True)
    assert "flush ruleset" not in script and "delete table" not in script
    assert "delete chain inet dmvpn arrivals" in script and "delete set inet dmvpn arrivals_sas" in script
    assert "typeof ip saddr . ipsec in spi;" in script and "hook input" in script
    assert f'comment "{marker(ArrivalsConfig(LOCAL))}"' in script


def test_the_marker_changes_with_the_configuration() -> None:
    assert marker(ArrivalsConfig(LOCAL)) != marker(ArrivalsConfig(LOCAL, group=3))
    assert marker(ArrivalsConfig(LOCAL)) != marker(ArrivalsConfig(IPv4Address("192.0.2.13")))
