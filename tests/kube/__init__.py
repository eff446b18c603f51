"""Kubernetes test infrastructure: a real control plane, a process kubelet, a fault proxy.

Modules, one job each:

* ``controlplane`` – ``ControlPlane``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
* ``pki``          – the control plane's certificates and keys
* ``faultproxy``   – ``FaultProxy``: faults injected in front of the apiserver
* ``faults``       – fault rules and the request log
* ``kubelet``      – ``ProcessKubelet``: Nodes, Leases, each node's Pod watch, graceful deletion
* ``nodes``        – node pools: the Node objects and their Leases
* ``nodeapi``      – the kubelet's API calls, as the node (and cluster DNS's reads)
* ``podworker``    – one Pod's container lifecycle and status
* ``containerenv`` – env / envFrom / downward API / secrets for a container
* ``podnet``       – Pod IPs on 127.0.0.0/8 and Service-name resolution
* ``process``      – process-tree start and kill
* ``proctable``    – shared ``/proc`` snapshots (descendants, sessions, leak markers)
* ``probes``       – readiness / liveness / startup probes
* ``logserver``    – the kubelet's ``/containerLogs`` endpoint that ``pods/log`` reaches
* ``scaleup``      – a node pool that scales up from zero, as cluster-autoscaler does
* ``identity``     – the code under test's ServiceAccount, bound to deploy/rbac.yaml's Role
* ``fixtures``     – pytest fixtures (registered by ``tests/conftest.py``)
* ``helpers``      – manifest builders and ``wait_until`` for the tests
* ``backend_helpers``  – what the KubernetesBackend tests share: settings, API-use checks, managers
* ``backend_fixtures`` – their fixtures (``ns``, ``kube_config_file``, ``v1``, ``ray_kubelet``...),
  registered by ``tests/conftest.py``

See ``README.md`` in this folder for behaviour and limits.
"""
