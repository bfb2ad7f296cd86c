"""Ray token authentication, kept on and kept private.

Ray 2.60 turns token auth on by default but writes `~/.ray/auth_token` world-readable (0644),
and a process that connects to a cluster (a worker node, `ray status`, the Jobs client) only
sends the token when `RAY_AUTH_MODE=token` is set on its side too. This module makes both true
before any Ray process starts. The token's value is never logged, printed or written to results.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from orchestrator import ray_api
from orchestrator.errors import InputError

MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
SECRET_VARS = (TOKEN_VAR,)


def token_path() -> Path:
    return Path(os.environ.get(TOKEN_PATH_VAR) or Path.home() / ".ray" / "auth_token")


def ensure_private_token(path: Path | None = None) -> Path:
    """Creates the token file (0600) if missing, and tightens it to 0600 if it is looser."""
    path = path or token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def enable_token_auth() -> None:
    """Token auth on for this process and the Ray processes it starts. Refuses to turn it off."""
    mode = os.environ.get(MODE_VAR, "token").lower()
    if mode != "token":
        raise InputError(f"{MODE_VAR}={mode}: hpo-orchestrator keeps Ray token authentication on; "
                         f"unset {MODE_VAR} or set it to 'token'")
    os.environ[MODE_VAR] = "token"
    if not os.environ.get(TOKEN_VAR):
        ensure_private_token()
    ray_api.reload_config()


def read_token() -> str:
    """The token, for an HTTP header. Callers must never print or store it."""
    return os.environ.get(TOKEN_VAR) or token_path().read_text().strip()
