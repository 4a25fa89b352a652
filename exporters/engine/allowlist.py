"""SSRF guard for ``/probe?target=``: a probe fetches whatever target it is given, so only allowed
targets are fetched, and only at the address that was checked.

A target is ``scheme://host[:port]`` and nothing else: the exporter appends the engine's metrics path
itself, so a target cannot carry a path, a query or a fragment that would reach another endpoint.

Allowed entries are CIDRs (``10.0.0.0/8``), exact host names (``vllm-0.internal``) or regular
expressions prefixed ``re:`` (``re:^vllm-[0-9]+\\.svc\\.cluster\\.local$``). A host name is resolved
once; it is allowed when every address it resolves to lies in an allowed CIDR (or its name is listed),
and the probe then connects to one of exactly those addresses: a second lookup at connect time could
answer differently (DNS rebinding), so there is none.

Denied entries (CIDRs) win over everything, ``allow_any_target`` included: cloud metadata services
(169.254.169.254, AWS's fd00:ec2::254 over IPv6, Alibaba's 100.100.100.200), link-local and
"this host" addresses. IPv4 addresses embedded in IPv6 ones (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::``,
6to4 ``2002::``) are checked as the IPv4 address they reach.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetRefused(ValueError):
    """The target is not allowed (or not a URL we can probe); the message says why."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower-case host name or IP literal (IPv6 without brackets)
    port: int

    @property
    def url(self) -> str:
        """The canonical base URL: what the probe is about, and its singleflight key."""
        return f"{self.scheme}://{_netloc(self.host, self.port)}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return _netloc(self.host, None if self.port == default else self.port)


@dataclass(frozen=True)
class CheckedTarget:
    """A target that passed the allow-list, with the addresses that were checked: the only ones a
    probe may connect to."""

    target: Target
    addresses: tuple[str, ...]

    def url_for(self, address: str, path: str) -> str:
        return f"{self.target.scheme}://{_netloc(address, self.target.port)}{path}"


def _netloc(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def parse_target(raw: str) -> Target:
    if not raw:
        raise TargetRefused("missing target parameter")
    url = raw if "://" in raw else f"http://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"scheme {parts.scheme!r} is not allowed (http or https only)")
    if not parts.hostname:
        raise TargetRefused(f"no host in target {raw!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise TargetRefused("credentials in the target URL are not allowed")
    # An empty query or fragment ("host/?", "host#") counts: appending a path to it would not reach it.
    if parts.path not in ("", "/") or "?" in url or "#" in url:
        raise TargetRefused(
            f"target {raw!r} has a path, query or fragment: give scheme://host:port only, "
            "the exporter fetches the engine's metrics path itself"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused(f"bad port in target {raw!r}") from None
    return Target(scheme=parts.scheme, host=parts.hostname.lower(), port=port)


def _ip(address: str) -> IPAddress:
    return ipaddress.ip_address(address.split("%", 1)[0])


def _reached(ip: IPAddress) -> list[IPAddress]:
    """The address and the IPv4 address it really reaches, if it embeds one."""
    out: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour:
            out.append(ip.sixtofour)
        if ip in _NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


class AllowList:
    def __init__(self, entries: list[str], allow_any: bool = False, denied: list[str] | None = None) -> None:
        self.allow_any = allow_any
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        self.patterns: list[re.Pattern[str]] = []
        self.denied: list[IPNetwork] = [ipaddress.ip_network(d, strict=False) for d in denied or []]
        for entry in entries:
            if entry.startswith("re:"):
                self.patterns.append(re.compile(entry[3:]))
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower())

    def _denied(self, ip: IPAddress) -> bool:
        return any(a in net for a in _reached(ip) for net in self.denied)

    def _ip_allowed(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    async def check(self, target: Target) -> CheckedTarget:
        """The target with the addresses a probe may connect to; TargetRefused with the reason otherwise."""
        host = target.host
        try:
            literal: IPAddress | None = _ip(host)
        except ValueError:
            literal = None
        if literal is not None:
            if self._denied(literal):
                raise TargetRefused(f"target address {host} is in the denied networks")
            if self.allow_any or self._ip_allowed(literal):
                return CheckedTarget(target, (str(literal),))
            raise TargetRefused(f"target address {host} is not in the allowed networks")
        named = self.allow_any or host in self.hosts or any(p.search(host) for p in self.patterns)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
        except OSError:
            raise TargetRefused(f"target host {host!r} does not resolve") from None
        addresses: list[IPAddress] = []
        for info in infos:
            ip = _ip(str(info[4][0]))
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise TargetRefused(f"target host {host!r} does not resolve")
        if any(self._denied(ip) for ip in addresses):
            raise TargetRefused(f"target host {host!r} resolves into the denied networks")
        if named or all(self._ip_allowed(ip) for ip in addresses):
            return CheckedTarget(target, tuple(str(ip) for ip in addresses))
        raise TargetRefused(f"target host {host!r} resolves outside the allowed networks")
