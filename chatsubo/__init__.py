"""Chatsubo: a virtual bar with spatial audio, peer to peer, served by one Python process."""

__version__ = "0.1.0"
