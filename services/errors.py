"""The one error type that means "the user's input is wrong", wherever in the system it is found."""

from __future__ import annotations


class InputError(Exception):
    """Bad data, config or command line: its text is one line for people, naming what and where.

    An actor that fails a request with it answers RequestFailed(kind="input") carrying that line alone;
    the launcher then prints it as is and exits with status 2, as for errors it finds itself before a
    session starts. Every other exception is a fault of the system (kind "internal", status 1).
    """
