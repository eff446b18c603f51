"""The process kubelet's API calls, each made with the identity a real cluster would use.

``NodeApi`` is one node's client (its ``system:node:NAME`` certificate): Pod status, Pod
deletion, Events, and the Secrets and ConfigMaps its Pods reference, all judged by the Node
authorizer and NodeRestriction. ``ClusterDns`` stands in for cluster DNS / kube-proxy, which
read Services and endpoints cluster-wide with their own (broader) rights; it lists Services
and Pods with the client it is given (the admin one in tests), since a node may only read
the Pods bound to itself.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .containerenv import Lookup


class PodGone(Exception):
    """The Pod was deleted or replaced by a new Pod of the same name: stop without writing status."""


class NotYetAllowed(Exception):
    """The Node authorizer does not yet know this node's Pod references the object (its graph
    catches up with the Pod's binding a moment later): retry, as the kubelet does."""


def node_client(url: str, ca_file: str, cert: str, key: str) -> client.ApiClient:
    config = client.Configuration()
    config.host = url
    config.ssl_ca_cert = ca_file
    config.cert_file = cert
    config.key_file = key
    api = client.ApiClient(config)
    api.user_agent = "process-kubelet/v1.37.2"
    return api


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


class NodeApi:
    """What one node's kubelet reads and writes."""

    def __init__(self, api: client.ApiClient, node_name: str) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.node_name = node_name

    def write_status(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        """Set these ``status`` fields with a JSON patch that first tests the Pod's uid, so a new
        Pod of the same name is never written to. Returns the stored Pod."""
        meta = pod["metadata"]
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]}]
        ops += [{"op": "add", "path": f"/status/{key}", "value": value} for key, value in status.items()]
        try:
            return _json(self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], ops,
                                                               _preload_content=False))
        except ApiException as exc:
            if exc.status == 404 or (exc.status == 422 and "test" in (exc.body or "")):
                raise PodGone() from None
            raise

    def delete_pod(self, pod: Mapping[str, Any]) -> None:
        """The kubelet's last word on a Pod: delete it for good (grace 0), this uid only."""
        meta = pod["metadata"]
        body = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"]))
        try:
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=body, _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a new Pod of that name
                raise

    def record_event(self, pod: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """An Event about ``pod``, as the kubelet reports it."""
        create_event(self.core, pod, reason, message, warning=warning, component="kubelet", host=self.node_name)

    def lookup(self, namespace: str) -> Lookup:
        """Secrets and ConfigMaps as the node may read them: only those its Pods reference."""

        def lookup(plural: str, name: str) -> dict[str, Any] | None:
            read = self.core.read_namespaced_secret if plural == "secrets" else self.core.read_namespaced_config_map
            try:
                return _json(read(name, namespace, _preload_content=False))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status == 403:
                    raise NotYetAllowed(f"{plural}/{name}: {exc.reason}") from None
                raise

        return lookup

    def pods(self) -> tuple[list[dict[str, Any]], str]:
        """The Pods bound to this node (the only ones a node may list), and the list's resourceVersion."""
        body = _json(self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}",
                                                           _preload_content=False))
        return body["items"], body["metadata"]["resourceVersion"]


def create_event(core: client.CoreV1Api, pod: Mapping[str, Any], reason: str, message: str, *, warning: bool,
                 component: str, host: str = "") -> None:
    """Create an Event about ``pod`` from ``component``; skipped if the namespace is going away."""
    meta = pod["metadata"]
    stamp = _now()
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
             "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                "namespace": meta["namespace"], "uid": meta["uid"],
                                "resourceVersion": meta.get("resourceVersion", "")},
             "reason": reason, "message": message, "type": "Warning" if warning else "Normal",
             "source": {"component": component, **({"host": host} if host else {})},
             "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
             "reportingComponent": component, "reportingInstance": host or component}
    try:
        core.create_namespaced_event(meta["namespace"], event, _preload_content=False)
    except ApiException as exc:
        if not (exc.status == 404 or (exc.status == 403 and "being terminated" in (exc.body or ""))):
            raise  # only a namespace that is gone or terminating makes an Event pointless


class ClusterDns:
    """Services and their endpoint Pods, for resolving Service names in a container's command."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)

    def services_and_pods(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        services = _json(self.core.list_service_for_all_namespaces(_preload_content=False))["items"]
        pods = _json(self.core.list_pod_for_all_namespaces(_preload_content=False))["items"]
        return services, pods
