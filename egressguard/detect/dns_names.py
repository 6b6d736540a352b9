"""What a DNS question name says about itself: its registered domain, and whether the rest looks like encoded data.

Tunnels (iodine, dnscat2, dns2tcp, DNSExfiltrator, sods) carry their bytes in the labels below a domain they
control: long labels of hex, base32, base64/base64url or raw bytes, each name new. Ordinary names are short words,
or CDN edge names that are long but made of few, repeated characters. The tests here are the classic ones (SANS
"Detecting DNS Tunneling", Farnham 2013; Born & Gustafson "NgViz", 2010; nDPI's "Susp DNS Traffic" / "Susp
Entropy" risks): label length, Shannon entropy, character classes, characters a host name cannot hold.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

# Multi-label public suffixes under which each next label is a separate registrant: the most used second-level
# registries of the Public Suffix List (publicsuffix.org, ICANN section), plus a few hosting platforms of its private
# section whose customers each get a subdomain (so many customers' names are not one "domain" here).
MULTI_LABEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "net.uk", "ltd.uk", "plc.uk", "nhs.uk", "sch.uk",
    "com.au", "net.au", "org.au", "edu.au", "gov.au", "id.au", "co.nz", "net.nz", "org.nz", "govt.nz", "ac.nz",
    "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "ad.jp", "com.br", "net.br", "org.br", "gov.br", "edu.br",
    "com.cn", "net.cn", "org.cn", "gov.cn", "edu.cn", "ac.cn", "co.in", "net.in", "org.in", "gov.in", "ac.in",
    "co.za", "org.za", "gov.za", "ac.za", "com.mx", "org.mx", "gob.mx", "com.ar", "gob.ar", "com.tr", "gov.tr",
    "com.tw", "org.tw", "edu.tw", "co.kr", "or.kr", "go.kr", "ac.kr", "com.sg", "edu.sg", "gov.sg", "com.hk",
    "org.hk", "edu.hk", "co.il", "org.il", "ac.il", "com.my", "co.id", "or.id", "ac.id", "com.ua", "co.th",
    "ac.th", "in.th", "go.th", "com.vn", "com.sa", "com.eg", "com.ng", "com.pk", "com.ph", "com.co", "com.pe",
    "com.pl", "com.ru", "co.at", "or.at", "ac.at", "gv.at", "com.es", "org.es", "co.it", "com.gr", "com.cy",
    # PSL private section: hosting platforms
    "cloudfront.net", "s3.amazonaws.com", "compute.amazonaws.com", "elb.amazonaws.com", "herokuapp.com",
    "github.io", "githubusercontent.com", "azurewebsites.net", "blob.core.windows.net", "cloudapp.net",
    "appspot.com", "firebaseapp.com", "web.app", "netlify.app", "vercel.app", "pages.dev", "workers.dev",
    "fastly.net", "global.ssl.fastly.net", "r2.dev", "ngrok.io", "ngrok-free.app",
})
MAX_SUFFIX_LABELS = 4  # the longest entry above ("blob.core.windows.net", "global.ssl.fastly.net") has 4 labels
# Names never judged: reverse lookups (RFC 1035 3.5, RFC 3596), multicast DNS / DNS-SD (RFC 6762, 6763), names
# that stay on the host or the home network (RFC 6761, RFC 8375).
IGNORED_SUFFIXES = ("in-addr.arpa", "ip6.arpa", "local", "localhost", "home.arpa", "invalid")
MAX_TLD = 24  # the longest ICANN TLDs (e.g. "xn--vermgensberatung-pwb") have 24 characters
HOSTNAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")  # RFC 952/1123 + '_'
HEX = frozenset(b"0123456789abcdef")
BASE32 = frozenset(b"abcdefghijklmnopqrstuvwxyz234567")  # RFC 4648 6, folded to lower case
VOWELS = frozenset(b"aeiou")
MIN_ENCODED = 16  # shorter subdomain text is never called encoded: CDN/cloud IDs such as d111111abcdef8 are 13-14
MIN_RANDOM = 20  # ... and text without a telling alphabet must be at least this long and random-looking
RANDOM_ENTROPY = 3.6  # bits/char; a 20+ character random base32/base36 string scores >= 3.8, words 2.5-3.3
RANDOM_VOWELS = 0.3  # vowel share of the letters: 0.19 expected in random base32/base36 (5 of 26), 0.35-0.45 in words
RANDOM_DIGITS = 2  # random base32/base36 text of 20+ characters holds digits (none: 0.15% for base36)


@dataclass(frozen=True)
class SplitName:
    """A question name split at its registered domain."""

    domain: str  # the registered domain ("biillpi.com"), or the first label when the name has no plausible TLD
    sub: tuple[bytes, ...]  # labels below it, structural "_" labels (SRV, DKIM, DMARC) removed
    no_tld: bool  # the last label cannot be a top-level domain (digits, too long): e.g. "dnscat.<hex>"


@dataclass(frozen=True)
class NameFeatures:
    """Measured facts of the subdomain text (labels joined without dots)."""

    length: int  # characters below the registered domain
    longest_label: int
    entropy: float  # Shannon entropy of the text, bits per character
    charset: str  # "binary", "symbols" (printable, not a host name), "hex", "base32", "base64", "random", "text"
    encoded: bool  # looks like data rather than a name

    @property
    def invalid(self) -> bool:
        """Holds bytes no host name can (RFC 952/1123 allow letters, digits and '-')."""
        return self.charset in ("binary", "symbols")


def _plausible_tld(label: bytes) -> bool:
    if label.startswith(b"xn--"):
        return len(label) <= MAX_TLD
    return 2 <= len(label) <= MAX_TLD and label.isalpha() and label.isascii()


def split_name(labels: tuple[bytes, ...]) -> SplitName | None:
    """The registered domain and the labels below it; None for names never judged (reverse, mDNS, single label)."""
    if len(labels) < 2 or not all(labels):
        return None
    lower = [label.lower() for label in labels]
    text = b".".join(lower).decode("ascii", "backslashreplace")
    if any(text == s or text.endswith("." + s) for s in IGNORED_SUFFIXES):
        return None
    if not _plausible_tld(lower[-1]):
        return SplitName(lower[0].decode("ascii", "backslashreplace"), tuple(labels[1:]), True)
    keep = 2
    for n in range(min(MAX_SUFFIX_LABELS, len(lower) - 1), 1, -1):
        if b".".join(lower[-n:]).decode("ascii", "replace") in MULTI_LABEL_SUFFIXES:
            keep = n + 1
            break
    if len(lower) < keep:
        return None
    domain = b".".join(lower[-keep:]).decode("ascii", "backslashreplace")
    sub = tuple(label for label in labels[:-keep] if not label.startswith(b"_"))
    return SplitName(domain, sub, False)


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte (0 for empty input)."""
    if not data:
        return 0.0
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def _charset(text: bytes) -> str:
    """The alphabet of a text: "binary", "symbols" (printable, not a host name), "hex", "base64", "base32", "text"."""
    lower, chars = text.lower(), set(text)
    if not text:
        return "text"
    if any(b < 0x21 or b > 0x7E for b in chars):
        return "binary"
    if not chars <= HOSTNAME_BYTES:
        return "symbols"
    if set(lower) <= HEX and any(48 <= b <= 57 for b in chars) and any(97 <= b <= 102 for b in lower):
        return "hex"
    if text != lower and text.upper() != text and any(48 <= b <= 57 for b in chars):
        return "base64"  # upper and lower case and digits: case carries information
    if set(lower) <= BASE32 and sum(50 <= b <= 55 for b in lower) * 10 >= len(lower):
        return "base32"
    return "text"


def _random(text: bytes) -> bool:
    """Random letters and digits: long, high entropy, some digits, few vowels among mostly letters, no words joined
    by hyphens."""
    letters = [b for b in text if 97 <= b <= 122]
    digits = sum(48 <= b <= 57 for b in text)
    if len(text) < MIN_RANDOM or len(letters) * 2 < len(text) or text.count(b"-") > 1 or digits < RANDOM_DIGITS:
        return False
    return entropy(text) >= RANDOM_ENTROPY and sum(b in VOWELS for b in letters) / len(letters) <= RANDOM_VOWELS


def name_features(sub: tuple[bytes, ...]) -> NameFeatures:
    """Length, entropy, alphabet and the encoded-or-not verdict of the labels below a registered domain."""
    text = b"".join(sub)
    longest = max((len(label) for label in sub), default=0)
    bits = entropy(text)
    lower = text.lower()
    charset = _charset(text)
    if len(text) < MIN_ENCODED:
        encoded = charset == "binary"
    elif charset in ("binary", "symbols", "hex", "base64"):
        encoded = True
    else:  # the whole text, or one long label of it (sods: "<62 base32 chars>.inbi.41953-0.id-1605.up")
        encoded = _random(lower) or any(_random(label.lower()) for label in sub if len(label) >= MIN_RANDOM)
        if encoded:
            charset = _charset(max(sub, key=len))
            charset = "random" if charset == "text" else charset
    return NameFeatures(len(text), longest, bits, charset, encoded)


__all__ = ["MULTI_LABEL_SUFFIXES", "NameFeatures", "SplitName", "entropy", "name_features", "split_name"]
