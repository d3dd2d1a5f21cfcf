"""Tier 1, the transport core: addressing, the wire format, sockets, server and client pieces,
queue tracking and acknowledgements. Import names from the modules (or from :mod:`zmqruntime`).
"""
