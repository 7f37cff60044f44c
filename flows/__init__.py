"""Prefect orchestration: thin flows over the Prefect-free ``audit`` library."""
