"""Errors of the export step (reported by the CLI without a traceback)."""

from visa_edge.runtime.errors import VisaEdgeError


class ExportError(VisaEdgeError):
    """A network could not be exported, linted, checked or built."""
