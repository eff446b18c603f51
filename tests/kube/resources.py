"""The resource types the emulator serves, and the discovery documents that describe them.

kubectl and the Python client never guess URLs: kubectl reads discovery (``/api``, ``/apis``,
``/api/v1``, ``/apis/<group>/<version>``) to map ``pods``/``po``/``Pod`` to a path, so every
type served must be listed here with its kind, scope, verbs and subresources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_GENERIC_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class ResourceType:
    """One served resource (``group``/``version``/``plural``) and how the emulator treats it.

    ``name_rule`` is the name syntax the apiserver enforces for this kind: ``subdomain``
    (DNS-1123 subdomain, most kinds), ``label`` (DNS-1123 label: Services, Namespaces) or
    ``path`` (RBAC: any path segment). ``schema`` is a JSON schema for custom resources
    (built-in kinds are checked against the pinned Kubernetes schemas instead).
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    field_selectors: tuple[str, ...] = ()
    name_rule: str = "subdomain"
    builtin: bool = True
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: independent of the version, as in etcd."""
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def allowed_field_selectors(self) -> tuple[str, ...]:
        return _GENERIC_FIELDS + self.field_selectors

    def qualified(self) -> str:
        """``pods`` or ``roles.rbac.authorization.k8s.io``: the name used in Status messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def builtin_types() -> list[ResourceType]:
    rbac = "rbac.authorization.k8s.io"
    return [
        ResourceType("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",),
                     ("status",), field_selectors=("status.phase",), name_rule="label"),
        ResourceType("", "v1", "pods", "Pod", True, "pod", ("po",), ("status", "log", "binding"), ("all",),
                     field_selectors=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                                      "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                                      "status.podIP", "status.nominatedNodeName")),
        ResourceType("", "v1", "services", "Service", True, "service", ("svc",), ("status",), ("all",),
                     field_selectors=("spec.clusterIP", "spec.type"), name_rule="label"),
        ResourceType("", "v1", "secrets", "Secret", True, "secret", field_selectors=("type",)),
        ResourceType("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",)),
        ResourceType("", "v1", "events", "Event", True, "event", ("ev",),
                     field_selectors=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                                      "involvedObject.uid", "involvedObject.apiVersion",
                                      "involvedObject.resourceVersion", "involvedObject.fieldPath",
                                      "reason", "reportingComponent", "source", "type")),
        ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount", ("sa",)),
        ResourceType("", "v1", "nodes", "Node", False, "node", ("no",), ("status",),
                     field_selectors=("spec.unschedulable",)),
        ResourceType(rbac, "v1", "roles", "Role", True, "role", name_rule="path"),
        ResourceType(rbac, "v1", "rolebindings", "RoleBinding", True, "rolebinding", name_rule="path"),
        ResourceType(rbac, "v1", "clusterroles", "ClusterRole", False, "clusterrole", name_rule="path"),
        ResourceType(rbac, "v1", "clusterrolebindings", "ClusterRoleBinding", False, "clusterrolebinding",
                     name_rule="path"),
    ]


def _resource_entry(rt: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular or rt.kind.lower(),
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(ALL_VERBS),
    }
    if rt.short_names:
        main["shortNames"] = list(rt.short_names)
    if rt.categories:
        main["categories"] = list(rt.categories)
    out = [main]
    for sub in rt.subresources:
        verbs = {"status": ["get", "patch", "update"], "log": ["get"], "binding": ["create"]}[sub]
        kind = {"log": "Pod", "binding": "Binding"}.get(sub, rt.kind)
        out.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                    "kind": kind, "verbs": verbs})
    return out


def resource_list(group_version: str, types: list[ResourceType]) -> dict[str, Any]:
    """``APIResourceList`` for one group/version."""
    resources: list[dict[str, Any]] = []
    for rt in types:
        if rt.api_version == group_version:
            resources.extend(_resource_entry(rt))
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def api_group(group: str, types: list[ResourceType]) -> dict[str, Any]:
    versions = sorted({rt.version for rt in types if rt.group == group}, reverse=True)
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
            "preferredVersion": entries[0]}


def api_group_list(types: list[ResourceType]) -> dict[str, Any]:
    groups = sorted({rt.group for rt in types if rt.group})
    body = [api_group(g, types) for g in groups]
    for g in body:
        del g["kind"], g["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": body}


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}
