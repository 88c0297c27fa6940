"""Seed-compatible entry points built on the services."""
