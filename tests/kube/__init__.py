"""Kubernetes test infrastructure: an API emulator served over HTTP and a process kubelet.

Modules, one job each:

* ``emulator``     – ``KubeEmulator``: lifecycle, kubeconfig/client helpers, fault injection
* ``server``       – the HTTP/REST front (routing, watch and log streaming)
* ``store``        – objects, resourceVersions, watch history, create/update/patch/delete
* ``controllers``  – garbage collector and namespace deletion (background)
* ``resources``    – served resource types and discovery documents
* ``defaults``     – per-kind defaulting and immutability rules
* ``schema``       – strict schema validation with kubernetes-validate (pinned: Kubernetes 1.37)
* ``validation``   – apiserver rules the schemas miss (names, labels, quantities, ports, ...)
* ``selectors``    – label and field selectors
* ``patching``     – merge, JSON and strategic-merge patches
* ``faults``       – injected faults and the request log
* ``tables``       – ``as=Table`` output for kubectl
* ``errors``       – ``kind: Status`` errors
* ``kubelet``      – ``ProcessKubelet``: the node, scheduling, the Pod watch loop
* ``scheduler``    – fit decision (rules, nodeSelector, allocatable)
* ``podworker``    – one Pod's container lifecycle and status
* ``containerenv`` – env / envFrom / downward API / secrets for a container
* ``podnet``       – Pod IPs on 127.0.0.0/8 and Service-name resolution
* ``process``      – process-tree start and kill
* ``proctable``    – shared ``/proc`` snapshots (descendants, sessions, leak markers)
* ``probes``       – readiness / liveness / startup probes
* ``events``       – core/v1 Events written by scheduler and kubelet
* ``fixtures``     – pytest fixtures (re-exported by ``conftest``)
* ``helpers``      – manifest builders and ``wait_until`` for the tests

See ``README.md`` in this folder for behaviour and limits.
"""
