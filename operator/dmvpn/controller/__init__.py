"""The kube-dmvpn operator: a kopf operator over a pure core.

``core`` decides (validation, node selection, address allocation, aggregation of what agents report,
finalisation) from plain values and is tested without kopf; ``handlers`` only feeds it from kopf's
indexes and writes what it decides. ``access`` declares every API call the operator makes, which the
Helm chart's ClusterRole must grant exactly. See docs/operator.md for the operator <-> agent contract.
"""
