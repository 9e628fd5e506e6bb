"""Background work: when mixing may run, and the jobs that carry out side effects."""
