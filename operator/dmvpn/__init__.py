"""kube-dmvpn: DMVPN (mGRE + NHRP + IPsec, Phase 3) for Kubernetes."""

__version__ = "0.1.0"
