"""One NetworkPolicy per Ray cluster: its Pods accept connections only from each other and
from the owner's Jupyter server Pod (by that Pod's labels), so other users' notebooks in a
shared namespace cannot reach its GCS, dashboard or Ray Client port. Created before the head
Pod (its Pods are never unprotected), carrying the cluster's labels and owner references
(deleted with the cluster, and with the server Pod by the garbage collector)."""

from __future__ import annotations

from typing import Any, Mapping

from kubernetes.client import NetworkingV1Api, V1NetworkPolicyPeer
from kubernetes.client.exceptions import ApiException

from . import k8s_objects as objects
from .k8s_api import Call
from .k8s_objects import ClusterMeta
from .k8s_status import labels_of

# KubeSpawner's labels that pick out one user's server Pod; any other label of the Pod
# (hub.jupyter.org/network-access-*, release, heritage) is shared by many users' Pods.
SERVER_POD_LABELS = ("component", "hub.jupyter.org/username", "hub.jupyter.org/servername")


def server_selector(pod_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels that select this server's Pod: KubeSpawner's identifying ones when present,
    else every label it has."""
    chosen = {k: v for k, v in pod_labels.items() if k in SERVER_POD_LABELS}
    return chosen if "hub.jupyter.org/username" in chosen else dict(pod_labels)


class ClusterNetworkPolicies:
    """Create and delete the NetworkPolicy of a cluster (the backend's client and settings)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.networking = NetworkingV1Api(owner.api_client)

    def selector(self) -> dict[str, str]:
        """Who besides the cluster's own Pods may connect: `server_pod_selector`, else the
        labels of the server's own Pod (read with the owner references); {} when unknown."""
        return dict(self.owner.server_pod_selector) or server_selector(self.owner.server_pod_labels or {})

    async def create(self, meta: ClusterMeta) -> None:
        if not self.owner.network_policy:
            return
        selector = self.selector()
        if not selector:
            self.owner.log.info("No NetworkPolicy for Ray cluster %s: this server runs in no Pod and "
                                "server_pod_selector is not set", meta.name)
            return
        peers = objects.to_models(V1NetworkPolicyPeer, self.owner.network_policy_ingress_from)
        body = objects.make_network_policy(meta, selector, peers)
        await self.owner.api.create(Call("create", "networkpolicies", meta.network_policy_name),
                                    self.networking.create_namespaced_network_policy,
                                    self.networking.read_namespaced_network_policy, body)

    async def delete(self, meta: ClusterMeta) -> None:
        """Delete it if it is this cluster's (read by name first: a newer cluster may have it)."""
        name = meta.network_policy_name
        call = Call("get", "networkpolicies", name)
        try:
            found = await self.owner.api.call(call, self.networking.read_namespaced_network_policy, name,
                                              self.owner.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise self.owner.api.failed(call, exc) from exc
        if labels_of(found).get(objects.LABEL_CLUSTER_ID) == meta.cluster_id:
            await self.owner.api.delete(Call("delete", "networkpolicies", name),
                                        self.networking.delete_namespaced_network_policy)
