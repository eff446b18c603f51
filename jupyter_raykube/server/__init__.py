"""The Jupyter server extension: the server's `ClusterManager` owns the clusters."""

from .app import RayKube

__all__ = ["RayKube"]
