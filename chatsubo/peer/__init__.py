"""The Python peers: the aiortc mesh peer, its signaling client, audio, and the bots.

Nothing here imports the server; peers reach it only over its WebSocket.
"""
