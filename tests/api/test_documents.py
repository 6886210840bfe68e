"""Reading multi-document YAML, the form users and the standalone agent hand us."""

import pytest

from dmvpn.api import DMVPNHub, DMVPNSpoke, ValidationFailed, dump_yaml, load_documents

GOOD = """
apiVersion: v1
kind: Secret
metadata: {name: dmvpn-psk}
stringData: {psk: a-long-enough-pre-shared-key}
---
apiVersion: dmvpn.io/v1alpha1
kind: DMVPNHub
metadata: {name: hub}
spec:
  nodeName: hub
  tunnel: {address: 10.255.0.1/24}
  ipsec: {psk: {secretRef: {name: dmvpn-psk}}}
---
# an empty document
---
apiVersion: dmvpn.io/v1alpha1
kind: DMVPNSpoke
metadata: {name: spokes}
spec:
  nodeSelector: {}
  ipsec: {mode: disabled}
  hubs: [{name: hub}]
"""


def test_loads_our_objects_and_skips_the_rest() -> None:
    objects = load_documents(GOOD)
    assert [type(o) for o in objects] == [DMVPNHub, DMVPNSpoke]
    assert [o.name for o in objects] == ["hub", "spokes"]


def test_foreign_documents_can_be_refused() -> None:
    with pytest.raises(ValidationFailed) as raised:
        load_documents(GOOD, skip_foreign=False, source="all.yaml")
    assert str(
        raised.value
    ) == 'all.yaml document 1 (Secret/dmvpn-psk): apiVersion: must be dmvpn.io/v1alpha1, got "v1"\n' + (
        'all.yaml document 1 (Secret/dmvpn-psk): kind: must be DMVPNHub or DMVPNSpoke, got "Secret"'
    )


def test_problems_of_all_documents_name_their_document() -> None:
    text = GOOD.replace("10.255.0.1/24", "10.255.0.1/33").replace("hubs: [{name: hub}]", "hubs: []")
    with pytest.raises(ValidationFailed) as raised:
        load_documents(text, source="cloud.yaml")
    assert str(raised.value).splitlines() == [
        "cloud.yaml document 2 (DMVPNHub/hub): spec.tunnel.address: must be an IPv4 address with its prefix "
        'length such as 10.255.0.1/24, got "10.255.0.1/33"',
        "cloud.yaml document 4 (DMVPNSpoke/spokes): spec.hubs: must have at least 1 item",
    ]


def test_a_scalar_document_is_a_problem() -> None:
    with pytest.raises(ValidationFailed, match="document 2: must be a mapping"):
        load_documents("apiVersion: dmvpn.io/v1alpha1\n---\njust text\n", skip_foreign=False)


def test_yaml_syntax_errors_are_reported_with_their_line() -> None:
    with pytest.raises(
        ValidationFailed,
        match=r"^bad.yaml: not valid YAML: mapping values are not allowed here \(line 2, column 4\)$",
    ):
        load_documents("a: b\n  c: [\n", source="bad.yaml")


def test_yaml_1_1_surprises_are_caught() -> None:
    # `no` is a boolean in YAML 1.1: a node called "no" must be quoted.
    text = GOOD.replace("nodeName: hub", "nodeName: no")
    with pytest.raises(ValidationFailed, match=r"spec.nodeName: must be a valid string, got false"):
        load_documents(text)


def test_dump_yaml_round_trips() -> None:
    objects = load_documents(GOOD)
    assert load_documents(dump_yaml(objects)) == objects
