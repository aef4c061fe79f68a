"""Development helpers shared by the demo, the tests and the benchmark (not shipped in the Lambda)."""
