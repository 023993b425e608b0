"""Real components for the test tiers and `make run`: processes, not fakes."""
