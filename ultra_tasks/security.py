"""Who may reach the project's HTTP services: loopback by default, and beyond it only behind a guard.

Each check runs before its server binds and raises ``ConfigurationError`` naming the setting to fix:

- Flower beyond loopback needs FLOWER_BASIC_AUTH set to real credentials (not ``ultra:ultra``, no empty
  password) and its API not opened by FLOWER_UNAUTHENTICATED_API;
- the status server beyond loopback needs STATUS_TOKEN;
- the HTTP API always asks for a tenant's key; beyond loopback it needs TLS (API_TLS_CERTFILE and
  API_TLS_KEYFILE), so keys never cross a network in clear, or an explicit ``--behind-tls-proxy`` when a
  TLS-terminating proxy in front of it does that;
- the fake provider has no authentication at all (its fault-control API is for tests), so beyond loopback
  it needs an explicit ``--allow-remote``.

docs/security.md has the threat model.
"""

from __future__ import annotations

import ipaddress

from ultra_tasks.errors import ConfigurationError

#: where every HTTP service listens unless told otherwise
DEFAULT_BIND_HOST = "127.0.0.1"
#: the local stack's Flower credentials: fine on loopback, refused beyond it
DEFAULT_FLOWER_AUTH = "ultra:ultra"


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps a server reachable from this machine only.

    "" and "0.0.0.0"/"::" mean every interface; a host name other than ``localhost`` may resolve to any
    interface, so it counts as beyond loopback.
    """
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _weak_flower_users(basic_auth: str) -> list[str]:
    default_password = DEFAULT_FLOWER_AUTH.partition(":")[2]
    weak = []
    for pair in basic_auth.split(","):
        user, _, password = pair.partition(":")
        if not password.strip() or password == default_password or pair == DEFAULT_FLOWER_AUTH:
            weak.append(user or "(empty)")
    return weak


def check_flower_exposure(host: str, basic_auth: str, *, unauthenticated_api: str = "") -> None:
    """Refuse Flower beyond loopback with the default credentials or an empty password, or with its API
    opened by FLOWER_UNAUTHENTICATED_API (pass that variable's value)."""
    if is_loopback(host):
        return
    if unauthenticated_api.strip().lower() in {"1", "true", "yes", "on", "y", "t"}:
        raise ConfigurationError(
            f"FLOWER_UNAUTHENTICATED_API: Flower would listen on {host or 'every interface'} (beyond "
            "loopback) with its API open to anyone; unset it, or listen on 127.0.0.1"
        )
    weak = _weak_flower_users(basic_auth)
    if weak:
        raise ConfigurationError(
            f"FLOWER_BASIC_AUTH: Flower would listen on {host or 'every interface'} (beyond loopback) with "
            f"the default or an empty password for user(s) {', '.join(weak)}; set FLOWER_BASIC_AUTH to "
            "user:password with a password of your own, or listen on 127.0.0.1"
        )


def check_status_exposure(host: str, token: str | None) -> None:
    """Refuse the status server beyond loopback without STATUS_TOKEN."""
    if not is_loopback(host) and not (token or "").strip():
        raise ConfigurationError(
            f"STATUS_TOKEN: the status server would listen on {host or 'every interface'} (beyond "
            "loopback) with no access control; set STATUS_TOKEN (clients send Authorization: Bearer "
            "<token>), or listen on 127.0.0.1"
        )


def check_fake_provider_exposure(host: str, allow_remote: bool) -> None:
    """Refuse the fake provider beyond loopback unless explicitly allowed (it has no authentication)."""
    if not is_loopback(host) and not allow_remote:
        raise ConfigurationError(
            f"the fake provider would listen on {host or 'every interface'} (beyond loopback), where anyone "
            "could switch its faults and read its counters; pass --allow-remote (allow_remote=True) on a "
            "private network only, or listen on 127.0.0.1"
        )


def check_api_exposure(
    host: str, certfile: object | None, keyfile: object | None, *, behind_tls_proxy: bool = False
) -> None:
    """Refuse the HTTP API beyond loopback without TLS of its own or a TLS proxy declared in front of it:
    every request carries a tenant's key, which must not travel in clear."""
    if bool(certfile) != bool(keyfile):
        raise ConfigurationError("API_TLS_CERTFILE and API_TLS_KEYFILE: set both, or neither")
    if is_loopback(host) or certfile or behind_tls_proxy:
        return
    raise ConfigurationError(
        f"API_TLS_CERTFILE: the HTTP API would listen on {host or 'every interface'} (beyond loopback) "
        "where API keys would travel in clear; set API_TLS_CERTFILE and API_TLS_KEYFILE, pass "
        "--behind-tls-proxy when a TLS-terminating proxy is its only client, or listen on 127.0.0.1"
    )
