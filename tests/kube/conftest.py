"""Fixtures for the emulator's own tests (defined in ``fixtures.py`` so other folders can share them)."""

from .fixtures import (kube_api_client, kube_config_file, kube_control_plane, kube_emulator, kube_fault_proxy,
                       kube_namespace, make_kube_namespace, process_kubelet)

__all__ = ["kube_api_client", "kube_config_file", "kube_control_plane", "kube_emulator", "kube_fault_proxy",
           "kube_namespace", "make_kube_namespace", "process_kubelet"]
