"""Lifecycle: pipeline configuration and runs, the steps, the bundle registry and reports."""
