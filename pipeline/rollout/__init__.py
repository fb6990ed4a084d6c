"""Rollout: deployment values, rendered manifests, the Kubernetes client, the canary gate."""
