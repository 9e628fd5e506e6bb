"""Webhook delivery (being built)."""

from __future__ import annotations

from callrec.jobs.pipeline import Pipeline


def install(pipeline: Pipeline) -> None:
    """Register the webhook hook, delivery handler and sweep on ``pipeline``."""
