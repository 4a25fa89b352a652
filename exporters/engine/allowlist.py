"""SSRF guard for ``/probe?target=``: a probe fetches whatever URL it is given, so only allowed
targets are fetched.

Entries are CIDRs (``10.0.0.0/8``), exact host names (``vllm-0.internal``) or regular expressions
prefixed ``re:`` (``re:^vllm-[0-9]+\\.svc\\.cluster\\.local$``). A host name that no entry names is
resolved, and allowed only when every address it resolves to lies in an allowed CIDR (so a DNS
name cannot smuggle a request to a metadata service). The default (config.py) admits loopback and
private ranges and nothing else: self-hosted engines live there, 169.254.169.254 does not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetRefused(ValueError):
    """The target is not allowed (or not a URL we can probe); the message says why."""


@dataclass(frozen=True)
class Target:
    url: str  # base URL without trailing slash
    host: str
    port: int


def parse_target(raw: str) -> Target:
    if not raw:
        raise TargetRefused("missing target parameter")
    url = raw if "://" in raw else f"http://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"scheme {parts.scheme!r} is not allowed (http or https only)")
    if not parts.hostname:
        raise TargetRefused(f"no host in target {raw!r}")
    if parts.username or parts.password:
        raise TargetRefused("credentials in the target URL are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused(f"bad port in target {raw!r}") from None
    return Target(url=url.rstrip("/"), host=parts.hostname, port=port)


class AllowList:
    def __init__(self, entries: list[str], allow_any: bool = False) -> None:
        self.allow_any = allow_any
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        self.patterns: list[re.Pattern[str]] = []
        for entry in entries:
            if entry.startswith("re:"):
                self.patterns.append(re.compile(entry[3:]))
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower())

    def _ip_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    async def check(self, target: Target) -> None:
        """Return if allowed, raise TargetRefused with the reason otherwise."""
        if self.allow_any:
            return
        host = target.host.lower()
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            is_ip = True
        except ValueError:
            is_ip = False
        if is_ip:
            if self._ip_allowed(host):
                return
            raise TargetRefused(f"target address {host} is not in the allowed networks")
        if host in self.hosts or any(p.search(host) for p in self.patterns):
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
        except OSError:
            raise TargetRefused(f"target host {host!r} is not allowed and does not resolve") from None
        addresses = {info[4][0] for info in infos}
        if addresses and all(self._ip_allowed(a) for a in addresses):
            return
        raise TargetRefused(f"target host {host!r} resolves outside the allowed networks")
