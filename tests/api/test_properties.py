"""Properties over generated objects: round trips, agreement with the CRD schema, and no crash on junk."""

import copy
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmvpn.api import ValidationFailed, dump_object, parse_object

SchemaErrors = Callable[[Mapping[str, Any]], list[str]]
FIXTURES_ARE_PURE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
label_values = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?", fullmatch=True)
unicast = (
    st.integers(min_value=int(IPv4Address("1.0.0.0")), max_value=int(IPv4Address("223.255.255.255")))
    .map(IPv4Address)
    .filter(lambda a: not a.is_loopback and not a.is_reserved and not a.is_unspecified)
)
good_ike = st.sampled_from(
    [
        "aes256gcm16-prfsha256-ecp256",
        "aes128gcm16-prfsha256-x25519",
        "aes256-sha384-modp3072",
        "chacha20poly1305-prfsha256-ecp384",
    ]
)
good_esp = st.sampled_from(["aes256gcm16-ecp256", "aes256gcm16", "aes128-sha256", "chacha20poly1305-x25519"])
secret_ref = st.fixed_dictionaries(
    {"name": names}, optional={"namespace": names.filter(lambda n: "." not in n), "key": names}
)


@st.composite
def tunnel_interfaces(draw: st.DrawFn) -> tuple[IPv4Network, list[str]]:
    """A tunnel subnet inside 10.0.0.0/8 and a few distinct host addresses of it, as ``a.b.c.d/len``."""
    prefixlen = draw(st.integers(min_value=8, max_value=29))
    network = IPv4Network((draw(st.integers(0, 2**24 - 1)) + int(IPv4Address("10.0.0.0")), prefixlen), strict=False)
    hosts = draw(st.lists(st.integers(1, network.num_addresses - 2), min_size=3, max_size=3, unique=True))
    return network, [f"{network.network_address + h}/{prefixlen}" for h in hosts]


def prefix_lists(second_octets: range) -> st.SearchStrategy[list[str]]:
    """Non-overlapping /24s of 172.16.0.0/12 (never in the 10/8 tunnel subnets)."""
    return st.lists(st.tuples(st.sampled_from(second_octets), st.integers(0, 255)), max_size=4, unique=True).map(
        lambda pairs: [f"172.{a}.{b}.0/24" for a, b in pairs]
    )


def ipsec() -> st.SearchStrategy[dict[str, Any]]:
    psk = st.fixed_dictionaries({"psk": st.fixed_dictionaries({"secretRef": secret_ref})})
    x509 = st.fixed_dictionaries(
        {
            "x509": st.fixed_dictionaries(
                {"certificateSecretRef": secret_ref, "keySecretRef": secret_ref, "caSecretRef": secret_ref}
            )
        }
    )
    options = st.fixed_dictionaries(
        {},
        optional={
            "ikeProposals": st.lists(good_ike, min_size=1, max_size=3),
            "espProposals": st.lists(good_esp, min_size=1, max_size=3),
            "dpdDelay": st.integers(0, 86400),
            "rekeyTime": st.integers(60, 604800),
        },
    )
    required = st.tuples(st.sampled_from([{}, {"mode": "required"}]), psk | x509, options)
    disabled = st.tuples(st.just({"mode": "disabled"}), st.just({}) | psk, options)
    return (required | disabled).map(lambda parts: {**parts[0], **parts[1], **parts[2]})


def common(draw: st.DrawFn, *, single_node: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"ipsec": draw(ipsec())}
    if single_node:
        spec["nodeName"] = draw(names)
    else:
        spec["nodeSelector"] = draw(st.dictionaries(names, label_values, max_size=3))
    nhrp = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "holdTime": st.integers(1, 65535),
                "shortcutIdleTimeout": st.integers(1, 65535),
                "authentication": st.fixed_dictionaries({"secretRef": secret_ref}),
            },
        )
    )
    if nhrp:
        spec["nhrp"] = nhrp
    if draw(st.booleans()):
        spec["sitePrefixes"] = draw(prefix_lists(range(16, 24)))
    return spec


def tunnel_options(draw: st.DrawFn) -> dict[str, Any]:
    return draw(
        st.fixed_dictionaries(
            {},
            optional={
                "interface": st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True),
                "greKey": st.integers(0, 2**32 - 1),
                "networkId": st.integers(1, 2**32 - 1),
                "mtu": st.integers(576, 9000),
                "ttl": st.integers(1, 255),
            },
        )
    )


@st.composite
def hubs(draw: st.DrawFn) -> dict[str, Any]:
    spec = common(draw, single_node=draw(st.booleans()))
    _, addresses = draw(tunnel_interfaces())
    spec["tunnel"] = {**tunnel_options(draw), "address": addresses[0]}
    if spec.get("nodeName") and draw(st.booleans()):
        spec["nbma"] = {"address": str(draw(unicast))}
    summaries = draw(prefix_lists(range(24, 32)))
    if summaries:
        spec["summaryPrefixes"] = summaries
    spec["nhrp"] = {
        **spec.get("nhrp", {}),
        "phase": draw(st.sampled_from([1, 3] if summaries else [1, 2, 3])),
    }
    return {
        "apiVersion": "dmvpn.io/v1alpha1",
        "kind": "DMVPNHub",
        "metadata": {"name": draw(names)},
        "spec": spec,
    }


@st.composite
def spokes(draw: st.DrawFn) -> dict[str, Any]:
    single = draw(st.booleans())
    spec = common(draw, single_node=single)
    _, addresses = draw(tunnel_interfaces())
    tunnel = tunnel_options(draw)
    if single and draw(st.booleans()):
        tunnel["address"] = addresses[0]
        spec["nbma"] = {"address": str(draw(unicast))}
    if tunnel:
        spec["tunnel"] = tunnel
    local = [{"name": n} for n in draw(st.lists(names, max_size=2, unique=True))]
    remote_nbmas = draw(st.lists(unicast, max_size=2, unique=True))
    remote = [
        {"nbma": str(nbma), "tunnelAddress": address.split("/")[0]}
        for nbma, address in zip(remote_nbmas, addresses[1:], strict=False)
    ]
    spec["hubs"] = (local + remote) or [{"name": "hub-1"}]
    return {
        "apiVersion": "dmvpn.io/v1alpha1",
        "kind": "DMVPNSpoke",
        "metadata": {"name": draw(names)},
        "spec": spec,
    }


objects = hubs() | spokes()


@FIXTURES_ARE_PURE
@given(objects)
def test_valid_objects_round_trip(document: dict[str, Any]) -> None:
    parsed = parse_object(document)
    dumped = dump_object(parsed)
    assert parse_object(dumped) == parsed
    assert dump_object(parse_object(dumped)) == dumped


@FIXTURES_ARE_PURE
@given(objects)
def test_what_the_models_accept_the_api_server_accepts(schema_errors: SchemaErrors, document: dict[str, Any]) -> None:
    assert schema_errors(document) == []
    assert schema_errors(dump_object(parse_object(document), include_status=False)) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@FIXTURES_ARE_PURE
@given(objects, st.data())
def test_junk_anywhere_gives_validation_failed_and_nothing_else(document: dict[str, Any], data: st.DataObject) -> None:
    mutated = copy.deepcopy(document)
    path = data.draw(st.sampled_from(_paths(mutated)))
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = data.draw(json_values)
    try:
        parse_object(mutated)
    except ValidationFailed as failure:
        assert failure.problems
        for problem in failure.problems:
            assert problem.message and "Input should" not in problem.message, problem
            assert problem.path.split(".")[0].split("[")[0] in {
                "",
                "apiVersion",
                "kind",
                "metadata",
                "spec",
            }, problem


INTEGER_FIELDS = [
    ("tunnel", "greKey", 0, 2**32 - 1),
    ("tunnel", "networkId", 1, 2**32 - 1),
    ("tunnel", "mtu", 576, 9000),
    ("tunnel", "ttl", 1, 255),
    ("nhrp", "holdTime", 1, 65535),
    ("nhrp", "shortcutIdleTimeout", 1, 65535),
    ("ipsec", "dpdDelay", 0, 86400),
    ("ipsec", "rekeyTime", 60, 604800),
]


@pytest.mark.parametrize(("section", "field", "low", "high"), INTEGER_FIELDS)
@FIXTURES_ARE_PURE
@given(value=st.integers(min_value=-(2**40), max_value=2**40) | st.sampled_from([-1, 0, 1, 2**32, 2**32 - 1, 65536]))
def test_models_and_crd_agree_on_integer_ranges(
    schema_errors: SchemaErrors,
    hub: dict[str, Any],
    *,
    section: str,
    field: str,
    low: int,
    high: int,
    value: int,
) -> None:
    document = copy.deepcopy(hub)
    document["spec"].setdefault(section, {})[field] = value
    try:
        parse_object(document)
        accepted = True
    except ValidationFailed as failure:
        accepted = False
        assert (
            str(failure)
            == f"DMVPNHub/hub-1: spec.{section}.{field}: must be {low}..{high}"
            + (" seconds" if field in {"holdTime", "shortcutIdleTimeout", "dpdDelay", "rekeyTime"} else "")
            + (" bytes" if field == "mtu" else "")
            + f", got {value}"
        )
    assert accepted == (low <= value <= high) == (schema_errors(document) == [])


@FIXTURES_ARE_PURE
@given(name=st.text(max_size=20) | st.from_regex(r"[A-Za-z0-9_.-]{1,17}", fullmatch=True))
def test_models_and_crd_agree_on_interface_names(schema_errors: SchemaErrors, hub: dict[str, Any], name: str) -> None:
    document = copy.deepcopy(hub)
    document["spec"]["tunnel"]["interface"] = name
    try:
        parse_object(document)
        accepted = True
    except ValidationFailed:
        accepted = False
    assert accepted == (schema_errors(document) == [])
