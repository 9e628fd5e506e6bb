"""Stitching an interaction's calls into one recording (being built)."""

from __future__ import annotations

from callrec.jobs.pipeline import Pipeline


def install(pipeline: Pipeline) -> None:
    """Register the stitch job's handler and sweep on ``pipeline``."""
