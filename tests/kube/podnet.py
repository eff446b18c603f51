"""Pod networking for the process kubelet: loopback Pod IPs and Service names that reach Pods.

Each Pod gets its own loopback address (Linux routes all of 127.0.0.0/8 to ``lo``), reported
as ``status.podIP``; processes still share the host's network namespace, so a server that
binds ``0.0.0.0:PORT`` collides with another Pod's server on the same port, and outgoing
connections come from 127.0.0.1 unless the process binds its source address.

Service names: there is no cluster DNS and no kube-proxy. The kubelet resolves Service
hostnames *when it starts a container*: every occurrence of ``<svc>.<ns>``,
``<svc>.<ns>.svc`` or ``<svc>.<ns>.svc.cluster.local`` in the container's command, args and
env values, and the bare ``<svc>`` of the Pod's own namespace where it stands in a host
position (``svc:6379``, ``http://svc/``, ``--host=svc``, or a whole value), is replaced by
the IP of one endpoint Pod selected by the Service (a Ready one if any, else the oldest
scheduled one): DNS as for a headless Service. A container whose strings name a Service
that has a selector but no scheduled Pod yet waits in ``ContainerCreating`` until one has an
IP. Limits: names built at run time (not present in command/args/env) do not resolve; the
address is fixed at container start, so if the endpoint Pod is replaced the container keeps
the old IP (a restart picks up the new one); ``spec.clusterIP`` (allocated from
10.96.0.0/12 as on a real cluster) is not routed anywhere.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from typing import Any, Iterable, Mapping

_EXPAND = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known vars substituted, unknown kept, ``$$`` -> ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _EXPAND.sub(sub, text)


class IPAllocator:
    """Hands out addresses of ``cidr`` in order (skipping .0, .1 and .255), never reusing a live one."""

    def __init__(self, cidr: str = "127.0.0.0/16") -> None:
        self._net = ipaddress.ip_network(cidr)
        self._next = int(self._net.network_address) + 2
        self._live: set[str] = set()
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            for _ in range(self._net.num_addresses):
                value = self._next
                self._next += 1
                if self._next >= int(self._net.broadcast_address):
                    self._next = int(self._net.network_address) + 2
                ip = str(ipaddress.ip_address(value))
                if ip.endswith((".0", ".255")):
                    continue
                if ip not in self._live:
                    self._live.add(ip)
                    return ip
        raise RuntimeError(f"no free pod IPs left in {self._net}")

    def release(self, ip: str | None) -> None:
        with self._lock:
            self._live.discard(ip or "")


def _endpoint_ip(service: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> str | None:
    selector = (service.get("spec") or {}).get("selector") or {}
    best: tuple[bool, str, int, str] | None = None
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or status.get("phase") in ("Succeeded", "Failed") or not _selects(selector, pod):
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        meta = pod["metadata"]
        rank = (not ready, str(meta.get("creationTimestamp", "")), int(meta.get("resourceVersion", 0)), ip)
        if best is None or rank < best:
            best = rank
    return best[3] if best else None


def _selects(selector: Mapping[str, str], pod: Mapping[str, Any]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


class ServiceNames:
    """One container start's view of Services: which hostnames occur and what they resolve to."""

    def __init__(self, namespace: str, services: list[Mapping[str, Any]], pods: list[Mapping[str, Any]]) -> None:
        self.namespace = namespace
        self._services = services
        self._pods = pods

    def _forms(self, svc: Mapping[str, Any]) -> tuple[list[str], str | None]:
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        fqdns = [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}"]
        return fqdns, name if ns == self.namespace else None

    def resolve(self, texts: list[str]) -> tuple[dict[str, str], list[str]]:
        """(hostname -> IP for every Service named in ``texts``, Services that have no endpoint yet)."""
        table: dict[str, str] = {}
        waiting: list[str] = []
        blob = "\n".join(texts)
        for svc in self._services:
            fqdns, short = self._forms(svc)
            named = [f for f in fqdns if _fqdn_pattern(f).search(blob)]
            if short is not None and _short_pattern(short).search(blob):
                named.append(short)
            if not named:
                continue
            if not (svc.get("spec") or {}).get("selector"):
                continue
            ns_pods = [p for p in self._pods if p["metadata"].get("namespace") == svc["metadata"]["namespace"]]
            ip = _endpoint_ip(svc, ns_pods)
            if ip is None:
                waiting.append(f'{svc["metadata"]["namespace"]}/{svc["metadata"]["name"]}')
                continue
            for host in named:
                table[host] = ip
        return table, waiting


def _fqdn_pattern(host: str) -> re.Pattern[str]:
    return re.compile(r"(?<![A-Za-z0-9_.-])" + re.escape(host) + r"(?![A-Za-z0-9_-]|\.[A-Za-z0-9])")


def _short_pattern(host: str) -> re.Pattern[str]:
    h = re.escape(host)
    return re.compile(
        rf"(?:(?<=^)|(?<==)|(?<=://)|(?<=@)|(?<=\s)){h}(?=:\d)"  # host:port
        rf"|(?:(?<=://)|(?<=@)){h}(?=[:/\s'\"]|$)"  # URL authority
        rf"|^{h}$|(?<==){h}$",  # a whole value
        re.MULTILINE,
    )


def rewrite(text: str, table: Mapping[str, str]) -> str:
    """Replace Service hostnames in one string by their endpoint IPs (longest name first)."""
    for host in sorted(table, key=len, reverse=True):
        pattern = _fqdn_pattern(host) if "." in host else _short_pattern(host)
        text = pattern.sub(table[host], text)
    return text
