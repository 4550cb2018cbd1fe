"""The signaling server: the page, room discovery and the relay of offers, answers and candidates.

It never loads the peer side (aiortc, PyAV, numpy): the server carries no audio.
"""
