"""Performance benchmarks: each script prints a table of ratios against a reference and a target (not timed tests)."""
