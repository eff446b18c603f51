"""Do a driver and a cluster image run the same Ray and Python? Ray needs the same Ray version
on both sides and the same Python minor version for drivers (pickled functions). Used by the
Kubernetes backend (which image a cluster gets, and a check before it starts one) and by the
kernel before it connects, so front-ends need not import the Kubernetes backend."""

from __future__ import annotations

import re

from .errors import RayVersionMismatch

_IMAGE_TAG = re.compile(r"^(?P<ray>\d+\.\d+\.\d+)(?:-py(?P<major>\d)(?P<minor>\d+))?(?:-.+)?$")


def default_image(ray_version: str, python_version: tuple[int, int]) -> str:
    """The official image that matches a kernel, e.g. `rayproject/ray:2.60.0-py311`."""
    return f"rayproject/ray:{ray_version}-py{python_version[0]}{python_version[1]}"


def image_versions(image: str) -> tuple[str, str | None] | None:
    """(Ray version, "3.11" or None) read from a `rayproject/ray`-style tag, or None when the
    tag says nothing (a digest, `latest`, a custom tag)."""
    if "@" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return None
    match = _IMAGE_TAG.match(tag)
    if match is None:
        return None
    python = f"{match['major']}.{match['minor']}" if match["major"] else None
    return match["ray"], python


def version_mismatch(image: str, ray_version: str, python_version: str | None, *,
                     who: str = "this kernel") -> str:
    """Why `who`, with these versions, cannot use a cluster running `image` ("" if it can, or
    if the tag does not say). Ray needs the same Ray version on both sides, and the same
    Python minor version for drivers (pickled functions)."""
    found = image_versions(image)
    if found is None:
        return ""
    image_ray, image_python = found
    ray_ok = image_ray == ray_version
    python_ok = python_version is None or image_python is None or image_python == python_version
    if ray_ok and python_ok:
        return ""
    here = f"Ray {ray_version}" + (f" on Python {python_version}" if python_version else "")
    there = f"Ray {image_ray}" + (f" on Python {image_python}" if image_python else "")
    wanted_py = python_version or image_python
    matching = f"rayproject/ray:{ray_version}" + (f"-py{wanted_py.replace('.', '')}" if wanted_py else "")
    return (f"version mismatch: {who} has {here} but the cluster image {image} runs {there}. "
            f"Ray needs the same versions on both sides. Either use a matching image "
            f"(c.KubernetesBackend.image = {matching!r}, or the cluster spec's image), or run the "
            f"kernel with ray=={image_ray}" + (f" on Python {image_python}" if image_python else "") + ".")


def check_ray_versions(image: str, *, ray_version: str, python_version: str | None = None,
                       who: str = "this kernel") -> None:
    """Refuse a driver whose Ray (and Python minor) version differs from the cluster image's.
    Images whose tag does not name versions pass (nothing to compare). Call it before
    `ray.init` with the kernel's `ray.__version__` and "3.11"-style Python version."""
    problem = version_mismatch(image, ray_version, python_version, who=who)
    if problem:
        raise RayVersionMismatch(problem)
