"""Errors of the inference runtime, each worded for the operator who has to fix it."""

from edge_agent.errors import UserError


class ModelError(UserError):
    """The model file cannot be used (missing, corrupt, wrong format, unknown contract)."""


class BackendUnavailableError(ModelError):
    """The requested inference backend is not installed on this machine."""
