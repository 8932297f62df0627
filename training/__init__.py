"""The tiny demo model: VISA's architecture at toy sizes, trained on procedural scenes (``runtime.scenes``)."""
