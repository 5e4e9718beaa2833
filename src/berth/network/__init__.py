"""Networking for containers: IPAM, the bridge driver, the nftables firewall (NAT, isolation, published ports).

May import ``berth.kernel``, ``berth.errors`` and the standard library; the engine drives it (engine/networks.py).
"""
