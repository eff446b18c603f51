"""Starting and finding a local cluster stays light: the `kubernetes` package (seconds of
import) is loaded only for Kubernetes clusters or quantity strings with a suffix, never to
start a local cluster or to read one back from its state file in another manager."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    from jupyter_raykube.blocking import BlockingManager
    from jupyter_raykube.manager import ClusterManager

    owner = BlockingManager(lambda: ClusterManager(default_backend="local"))
    reader = BlockingManager(lambda: ClusterManager(default_backend="local", stop_clusters_on_close=False))
    try:
        owner.call(owner.manager.create, {"name": "light", "groups": [{"name": "cpu", "cpus": "1", "max": 0}]})
        found = [c.name for c in reader.call(reader.manager.list)]  # decoded from the state file
        print("FOUND", found, "KUBERNETES", "kubernetes" in sys.modules)
    finally:
        reader.close()
        owner.close()
""")


def test_a_local_start_and_list_do_not_import_kubernetes() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FOUND ['light'] KUBERNETES False" in done.stdout, done.stdout + done.stderr[-3000:]
