"""Special address classes and well-known encrypted-DNS endpoints, each with where it comes from.

The table follows the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and the RFCs each row names)
plus the cloud providers' documented metadata addresses. It is shipped here rather than taken from Python's
`ipaddress.is_global`/`is_private`, whose answers changed between patch releases (CVE-2024-4032) and which calls
100.64.0.0/10 neither private nor global (detection-science 3.3). Where classes nest, the smallest range wins
(169.254.169.254 is `metadata`, the rest of 169.254.0.0/16 is `link_local`). Addresses in no row are `global`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from egressguard.schema import Severity


class Treatment(enum.StrEnum):
    """What a class does to a flow that leaves the sandbox towards it (the rules file can override it)."""

    DENY = "deny"  # always a finding (reason `address_class`) unless an allow entry names the class or its addresses
    ALLOWLIST = "allowlist"  # judged by the allow entries like any external destination
    IGNORE = "ignore"  # never a finding (traffic that cannot leave the link: loopback, multicast, broadcast)


@dataclass(frozen=True)
class AddressClass:
    name: str
    cidrs: tuple[str, ...]
    treatment: Treatment
    severity: Severity
    meaning: str
    source: str


# Order does not matter (the smallest range wins); the sources are the registries' "Reference" column or the
# provider's documentation.
ADDRESS_CLASSES: tuple[AddressClass, ...] = (
    AddressClass("loopback", ("127.0.0.0/8", "::1/128"), Treatment.IGNORE, Severity.LOW,
                 "this host's own loopback (never on a bridge)", "RFC 1122 3.2.1.3; RFC 4291 2.5.3"),
    AddressClass("metadata", ("169.254.169.254/32", "169.254.170.2/32", "169.254.169.253/32", "169.254.169.123/32",
                              "fd00:ec2::254/128", "fd00:ec2::253/128", "fd00:ec2::123/128", "168.63.129.16/32",
                              "100.100.100.200/32"),
                 Treatment.DENY, Severity.CRITICAL,
                 "cloud instance metadata and platform services: credentials of the host's cloud identity",
                 "AWS EC2 IMDS (169.254.169.254, fd00:ec2::254), Amazon DNS and Time Sync (.253/.123, fd00:ec2::253/"
                 "::123), ECS task metadata (169.254.170.2); GCP, Azure, Oracle and DigitalOcean IMDS use "
                 "169.254.169.254; Azure WireServer 168.63.129.16; Alibaba Cloud metadata 100.100.100.200"),
    AddressClass("link_local", ("169.254.0.0/16", "fe80::/10"), Treatment.DENY, Severity.HIGH,
                 "link-local: nothing legitimate is reached there from a sandbox", "RFC 3927; RFC 4291 2.5.6"),
    AddressClass("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"), Treatment.ALLOWLIST,
                 Severity.MEDIUM, "private networks (another network than the sandbox's: the internal network)",
                 "RFC 1918; RFC 4193 (unique local)"),
    AddressClass("cgnat", ("100.64.0.0/10",), Treatment.ALLOWLIST, Severity.MEDIUM,
                 "shared address space (carrier-grade NAT; Tailscale uses it)", "RFC 6598"),
    AddressClass("multicast", ("224.0.0.0/4", "ff00::/8"), Treatment.IGNORE, Severity.LOW,
                 "multicast (mDNS, SSDP, LLMNR: link noise)", "RFC 5771; RFC 4291 2.7"),
    AddressClass("broadcast", ("255.255.255.255/32",), Treatment.IGNORE, Severity.LOW, "limited broadcast",
                 "RFC 919; RFC 8190"),
    AddressClass("documentation", ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32",
                                   "3fff::/20"),
                 Treatment.DENY, Severity.MEDIUM, "documentation examples: never routed", "RFC 5737; RFC 3849; RFC 9637"),
    AddressClass("benchmarking", ("198.18.0.0/15", "2001:2::/48"), Treatment.DENY, Severity.MEDIUM,
                 "benchmarking: never routed outside a test network", "RFC 2544; RFC 5180"),
    AddressClass("reserved", ("0.0.0.0/8", "240.0.0.0/4", "192.0.0.0/24", "192.88.99.0/24", "::/128", "100::/64"),
                 Treatment.DENY, Severity.MEDIUM,
                 "reserved or special-purpose: \"this network\", future use, IETF protocol assignments, the retired "
                 "6to4 relay anycast, the unspecified address, discard-only",
                 "RFC 791/1122 (0/8); RFC 1112 (240/4); RFC 6890 (192.0.0.0/24); RFC 7526 (192.88.99.0/24); "
                 "RFC 4291 (::); RFC 6666 (100::/64)"),
)
# Configured in the rules' settings rather than fixed: the sandbox host and its gateways.
HOST_CLASS = AddressClass("host", (), Treatment.DENY, Severity.HIGH,
                          "the host or gateway of the sandbox (its own services: Docker API, kubelet, SSH, ...)",
                          "settings.host_addresses")
GLOBAL_CLASS = AddressClass("global", (), Treatment.ALLOWLIST, Severity.MEDIUM,
                            "every other address: the internet", "IANA special-purpose registries (by exclusion)")
# Ports of the host's own services where a connection from a sandbox is an escape attempt, not a mistake.
HOST_PORT_NAMES = {22: "SSH", 2375: "Docker API", 2376: "Docker API (TLS)", 2379: "etcd", 6443: "Kubernetes API",
                   10250: "kubelet", 10255: "kubelet (read-only)"}
HOST_CRITICAL_PORTS = frozenset(HOST_PORT_NAMES)

# ------------------------------------------------------------------------------------------ encrypted DNS
DOH_CLASS = "doh"  # pseudo-class: DNS-over-HTTPS/TLS/QUIC endpoints (a name usable in `classes`)
DOT_PORT = 853  # DNS over TLS (RFC 7858) and DNS over QUIC (RFC 9250)
DOH_PORTS = frozenset({443, DOT_PORT})
# Public resolvers that serve DoH/DoT, from each operator's setup page. A connection to these addresses on 443 or
# 853, or to these names (bound by DNS or seen as TLS SNI) on 443, is encrypted DNS that bypasses the resolver the
# sandbox is given, and with it every name binding the monitor can see.
DOH_ADDRESSES: tuple[str, ...] = (
    # Cloudflare 1.1.1.1 (developers.cloudflare.com/1.1.1.1/ip-addresses), incl. 1.1.1.2/.3 families
    "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3", "2606:4700:4700::1111", "2606:4700:4700::1001",
    # Google Public DNS (developers.google.com/speed/public-dns/docs/using)
    "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
    # Quad9 (quad9.net/service/service-addresses-and-features)
    "9.9.9.9", "149.112.112.112", "9.9.9.11", "149.112.112.11", "2620:fe::fe", "2620:fe::9",
    # OpenDNS (support.opendns.com)
    "208.67.222.222", "208.67.220.220", "2620:119:35::35", "2620:119:53::53",
    # AdGuard DNS (adguard-dns.io/kb/general/dns-providers), Mullvad (mullvad.net/help/dns-over-https-and-dns-over-tls)
    "94.140.14.14", "94.140.15.15", "194.242.2.2",
)
DOH_NAMES: frozenset[str] = frozenset({
    "cloudflare-dns.com", "one.one.one.one", "1dot1dot1dot1.cloudflare-dns.com", "security.cloudflare-dns.com",
    "family.cloudflare-dns.com", "mozilla.cloudflare-dns.com", "chrome.cloudflare-dns.com",
    "dns.google", "dns.google.com", "dns64.dns.google", "8888.google",
    "dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net",
    "doh.opendns.com", "dns.opendns.com", "dns.adguard.com", "dns.adguard-dns.com", "dns.nextdns.io",
    "doh.mullvad.net", "dns.mullvad.net", "doh.cleanbrowsing.org", "dns.controld.com",
})

DNS_PORT = 53
