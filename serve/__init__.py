"""Reasoning as a service: the VISA reasoning step behind a Ray Serve HTTP deployment (``visa-edge serve``).

Adapts ``runtime`` only; the client is ``visa_edge.runtime.remote_reasoner.RemoteReasoner``.
"""
