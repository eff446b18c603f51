"""The Ray token that guards a user's clusters.

Ray 2.60 authenticates every GCS, raylet and dashboard call with a bearer token. Ray reads it
once per process (a process-wide loader), so one token serves all clusters of one user: it is
created on first use, kept readable by the user only, and handed to every node we start and to
every driver that connects.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create_token(path: Path) -> str:
    """The user's token from `path`, created (mode 0600) if it does not exist yet."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


# Ray's GCS client ends the whole process when a GCS stays unreachable for this long (60 s by
# default). A Jupyter server holds clients to many clusters and must outlive any of them.
_GCS_LOSS_TOLERANCE_S = str(40 * 86400)


def use_token(token: str) -> None:
    """Make this process's Ray clients (GCS client, `ray.init`) present `token`, and keep a
    lost GCS from terminating the process."""
    if os.environ.get("RAY_AUTH_TOKEN") == token and os.environ.get("RAY_AUTH_MODE") == "token":
        return
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", _GCS_LOSS_TOLERANCE_S)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    from ray._raylet import AuthenticationTokenLoader, Config  # heavy: import late

    Config.initialize("")  # Ray caches the auth mode; re-read it from the environment
    AuthenticationTokenLoader.instance().reset_cache()
