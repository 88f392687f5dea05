"""The error types that cross layers: the user's bad input, and a request that failed on the way."""

from __future__ import annotations


class InputError(Exception):
    """Bad data, config or command line: its text is one line for people, naming what and where.

    An actor that fails a request with it answers RequestFailed(kind="input") carrying that line alone;
    the launcher then prints it as is and exits with status 2, as for errors it finds itself before a
    session starts. Every other exception is a fault of the system (kind "internal", status 1).
    """


class TransportError(RuntimeError):
    """A request that failed on the way: timeout, peer gone or an error reply.

    Defined here, free of ZeroMQ, so that actors catch it without loading the transport; the socket
    layer (services.transport.sockets) raises its subclasses.
    """
