"""Which image a cluster gets by default (KubernetesBackend.image/gpu_image), without a cluster."""

from __future__ import annotations

from jupyter_raykube.backends.k8s_settings import choose_images

V = ("2.60.0", (3, 11))


def test_the_admins_map_wins_then_the_users_server_image_then_the_official_one() -> None:
    admin = {"2.60.0/3.11": "registry.example/ray:2.60.0-py311", "2.60.0/3.11/gpu": "registry.example/ray:cu124"}
    assert choose_images(admin, "quay.io/jupyter/scipy-notebook:2026-11-01", *V) == (
        "registry.example/ray:2.60.0-py311", "registry.example/ray:cu124")
    # KubeSpawner's JUPYTER_IMAGE_SPEC: the user's own image has this Ray (the server runs in it)
    assert choose_images({}, "quay.io/jupyter/scipy-notebook:2026-11-01", *V) == (
        "quay.io/jupyter/scipy-notebook:2026-11-01", "quay.io/jupyter/scipy-notebook:2026-11-01")
    assert choose_images({"2.60.0/3.11/gpu": "registry.example/ray:cu124"}, "my/notebook:1", *V) == (
        "my/notebook:1", "registry.example/ray:cu124")
    assert choose_images({}, "", *V) == ("rayproject/ray:2.60.0-py311", "rayproject/ray:2.60.0-py311-gpu")
    assert choose_images({"2.9.0/3.11": "old"}, "", *V)[0] == "rayproject/ray:2.60.0-py311"  # other versions' entries
