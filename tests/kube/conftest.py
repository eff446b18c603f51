"""Fixtures for the emulator's own tests (defined in ``fixtures.py`` so other folders can share them)."""

from .fixtures import kube_api_client, kube_config_file, kube_emulator, process_kubelet

__all__ = ["kube_api_client", "kube_config_file", "kube_emulator", "process_kubelet"]
