"""kube-dmvpn's CNI plugin (standard library only; runs with the node's python3 >= 3.9)."""
