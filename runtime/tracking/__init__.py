"""Mask trackers: carry the reasoned mask from its frame to every other frame."""

from .base import Tracker, TrackOutput

__all__ = ["Tracker", "TrackOutput"]
