"""HTTP JSON client for the CI and state APIs (urllib3), and their tokens."""
