"""The embedded autoscaler: read demand from the GCS, plan, act through the backend."""
