"""Errors raised by sid_index. Only `serving` maps them to HTTP/gRPC codes; the CLI prints
their message without a traceback."""

from __future__ import annotations


class ReasonrecError(Exception):
    """Base of every error reasonrec raises on purpose (bad input, bad config, bad artifact)."""


class DataError(ReasonrecError):
    """Input data is missing, malformed or inconsistent (names the file and the record)."""


class ConfigError(ReasonrecError):
    """A configuration value is out of range or inconsistent with another."""


class ReleaseError(ReasonrecError):
    """A release directory is missing, partial, tampered with or of an unknown version."""
