"""Errors of the converter, each worded for the person running ``crackseg-convert``."""

from edge_agent.errors import UserError

EXIT_GATE_FAILED = 1  # crackseg-convert's exit status when an accuracy gate (or a selftest) fails


class ConvertError(UserError):
    """A conversion step cannot go on; the message names the problem and what to do."""


class CheckpointError(ConvertError):
    """A checkpoint that cannot be loaded (format, pickle refused, architecture mismatch)."""


class ValidationFailed(ConvertError):
    """The converted models do not meet the accuracy gate (e.g. INT8 lost too much F1)."""
