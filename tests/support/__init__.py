"""Helpers shared by the tests and the benches: fake servers, real processes, synthetic calls, audio checks."""
