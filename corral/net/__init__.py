"""The overlay's server-side brain: pure functions over snapshots (no I/O, no clock).

``ipam`` hands each host a subnet of the cluster CIDR; ``mesh`` decides, from every host's
reported overlay facts, which WireGuard peers each host should hold, which endpoints to dial,
which hosts must relay for pairs that are both behind NAT, and why.
"""
