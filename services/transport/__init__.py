"""ZeroMQ sockets, the event hub and CURVE keys: how the session's processes talk."""
