"""Observation: drift and SLO monitoring of a running stack."""
