"""Tests for callrec.jobs."""
