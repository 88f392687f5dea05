"""The launcher: command line, preflight, the training session, supervision and actor hosting."""
