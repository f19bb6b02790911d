"""Routing rules: matching, validated and versioned storage, the simulation."""
