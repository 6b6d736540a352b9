"""What a DNS question name says about itself: its registered domain, and whether the rest looks like encoded data.

Tunnels (iodine, dnscat2, dns2tcp, DNSExfiltrator, sods) carry their bytes in the labels below a domain they
control: long labels of hex, base32, base64/base64url or raw bytes, each name new. Ordinary names are short words,
or CDN edge names that are long but made of few, repeated characters. The tests are the classic ones (SANS
"Detecting DNS Tunneling", Farnham 2013; Born & Gustafson "NgViz", 2010; nDPI's "Susp DNS Traffic" / "Susp
Entropy" risks): label length, Shannon entropy, character classes, characters a host name cannot hold. A kernel
judges the first question of every row of a DNS message table (payload/dns_table.py) in place; the registered domain
comes from the whole Public Suffix List (payload/suffixes.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressguard.payload.suffixes import (MAX_LABELS, MAX_NAME, PublicSuffixRules, dotted_name, public_suffix_labels,
                                          suffix_hashes)

# Names never judged: reverse lookups (RFC 1035 3.5, RFC 3596), multicast DNS / DNS-SD (RFC 6762, 6763), names that
# stay on the host or the home network (RFC 6761, RFC 8375).
IGNORED_SUFFIXES = ("in-addr.arpa", "ip6.arpa", "local", "localhost", "home.arpa", "invalid")
MAX_TLD = 24  # the longest ICANN TLDs (e.g. "xn--vermgensberatung-pwb") have 24 characters
MIN_ENCODED = 16  # shorter subdomain text is never called encoded: CDN/cloud IDs such as d111111abcdef8 are 13-14
MIN_RANDOM = 20  # ... and text without a telling alphabet must be at least this long and random-looking
RANDOM_ENTROPY = 3.6  # bits/char; a 20+ character random base32/base36 string scores >= 3.8, words 2.5-3.3
RANDOM_VOWELS = 0.3  # vowel share of the letters: 0.19 expected in random base32/base36 (5 of 26), 0.35-0.45 in words
RANDOM_DIGITS = 2  # random base32/base36 text of 20+ characters holds digits (none: 0.15% for base36)
TEXT, HEX, BASE32, BASE64, RANDOM, SYMBOLS, BINARY = range(7)  # schema.DNS_CHARSETS


@njit(cache=True, nogil=True)
def _entropy(text, s, e, tally):
    """Shannon entropy of text[s:e], bits per byte, summed in first-occurrence order (as over a Counter). `tally`:
    byte counts then the order bytes first appear in (512 zeros, left as found), and p*log2(p) for p = c/n kept per
    (n, c) with a flag per n whose row is ready (NaN: not computed yet), so each term is computed once per batch."""
    counts, plogp, ready = tally
    n, distinct = e - s, 0
    for j in range(s, e):
        b = text[j]
        if counts[b] == 0:
            counts[256 + distinct] = b
            distinct += 1
        counts[b] += 1
    kept = n < ready.shape[0]
    if kept and not ready[n]:
        plogp[n, :] = np.nan
        ready[n] = True
    acc = 0.0
    for i in range(distinct):
        b = counts[256 + i]
        c = counts[b]
        term = plogp[n, c] if kept else np.nan
        if term != term:
            p = c / n
            term = p * np.log2(p)
            if kept:
                plogp[n, c] = term
        acc += term
        counts[b] = 0
    return -acc


# Byte classes, one bit each, so that the alphabet tests run as a table lookup per byte
PRINTABLE, HOST, UPPER, LOWER, DIGIT, HEX_DIGIT, HEX_LETTER, B32, B32_DIGIT, VOWEL, HYPHEN = (1 << i for i in range(11))


@njit(cache=True, nogil=True)
def _byte_classes():
    """The class bits of every byte value: printable ASCII, host-name byte (RFC 952/1123 letters, digits, '-', plus
    '_'), case, digits, hex (either case), base32 (RFC 4648 6, either case), lower-case vowel, hyphen."""
    out = np.zeros(256, np.int64)
    for b in range(256):
        up, low, digit = 65 <= b <= 90, 97 <= b <= 122, 48 <= b <= 57
        f = b + 32 if up else b
        out[b] = PRINTABLE * (0x21 <= b <= 0x7E) | HOST * (up or low or digit or b == 45 or b == 95) | \
            UPPER * up | LOWER * low | DIGIT * digit | HEX_LETTER * (97 <= f <= 102) | \
            HEX_DIGIT * (digit or 97 <= f <= 102) | B32 * (97 <= f <= 122 or 50 <= b <= 55) | \
            B32_DIGIT * (50 <= b <= 55) | VOWEL * (b in (97, 101, 105, 111, 117)) | HYPHEN * (b == 45)
    return out


@njit(cache=True, nogil=True)
def _charset(text, s, e, classes):
    """The alphabet of text[s:e]: binary, symbols (printable, not a host name), hex, base64 (both cases and digits),
    base32 (RFC 4648 6, folded), else text."""
    every, some, b32_digits = -1, 0, 0
    for j in range(s, e):
        f = classes[text[j]]
        every &= f
        some |= f
        b32_digits += (f & B32_DIGIT) != 0
    if s == e:
        return TEXT
    if not every & PRINTABLE:
        return BINARY
    if not every & HOST:
        return SYMBOLS
    if every & HEX_DIGIT and some & DIGIT and some & HEX_LETTER:
        return HEX
    if some & UPPER and some & LOWER and some & DIGIT:
        return BASE64  # case carries information
    if every & B32 and b32_digits * 10 >= e - s:
        return BASE32
    return TEXT


@njit(cache=True, nogil=True)
def _random(low, s, e, classes, tally):
    """Random letters and digits (lower-cased text): long, high entropy, some digits, few vowels among mostly
    letters, no words joined by hyphens."""
    letters = digits = hyphens = vowels = 0
    for j in range(s, e):
        f = classes[low[j]]
        letters += (f & LOWER) != 0
        vowels += (f & VOWEL) != 0
        digits += (f & DIGIT) != 0
        hyphens += (f & HYPHEN) != 0
    if e - s < MIN_RANDOM or letters * 2 < e - s or hyphens > 1 or digits < RANDOM_DIGITS:
        return False
    return _entropy(low, s, e, tally) >= RANDOM_ENTROPY and vowels / letters <= RANDOM_VOWELS


@njit(cache=True, nogil=True)
def _plausible_tld(tld):
    """The last label (lower case) can be a top-level domain: an A-label ("xn--"), or 2-24 letters."""
    n = tld.shape[0]
    if n >= 4 and tld[0] == 120 and tld[1] == 110 and tld[2] == 45 and tld[3] == 45:
        return n <= MAX_TLD
    if not 2 <= n <= MAX_TLD:
        return False
    for b in tld:
        if not 97 <= b <= 122:
            return False
    return True


@njit(cache=True, nogil=True)
def _ignored(dotted, n, ignored):
    """The dotted name dotted[:n] is one of the ignored zones or lies under one."""
    text, start, length = ignored
    for i in range(start.shape[0]):
        k, t = length[i], start[i]
        if n == k or n > k and dotted[n - k - 1] == 46:
            same = True
            for j in range(k):
                same = same and dotted[n - k + j] == text[t + j]
            if same:
                return True
    return False


@njit(cache=True, nogil=True)
def _split(names, off, scratch, rules, ignored, rec):
    """Registered domain of the name at names[off] into rec.domain/domain_labels/no_tld; returns the label range
    (first, end, drop structural '_' labels) below it, end 0 when the name is never judged."""
    dotted, label_start, hashes = scratch
    n, labels = dotted_name(names, off, dotted, label_start)
    if n < 0 or labels < 2:
        return 0, 0, False
    if _ignored(dotted, n, ignored):
        return 0, 0, False
    if not _plausible_tld(dotted[label_start[labels - 1]:n]):  # "dnscat.<hex>": the first label stands for it
        rec.domain, rec.domain_labels, rec.no_tld = off, 1, 1
        return 1, labels, False
    suffix_hashes(dotted, n, label_start, labels, hashes)
    public = public_suffix_labels(dotted, n, label_start, labels, hashes, rules[0], rules[1], rules[2])
    if public == 0 or labels < public + 1:
        return 0, 0, False
    rec.domain, rec.domain_labels = off + label_start[labels - public - 1], public + 1
    return 0, labels - public - 1, True


@njit(cache=True, nogil=True)
def _join_labels(names, off, label_start, first, end, structural, text, sub_start, sub_len):
    """Labels first..end-1 of the name at names[off] joined into `text`, their starts and lengths in sub_*;
    returns (bytes, labels). Structural "_" labels (SRV, DKIM, DMARC: RFC 2782, 6376, 7489) are left out when asked."""
    size, n_sub = 0, 0
    for i in range(first, end):
        p = off + label_start[i]  # the label's length byte: the dotted form keeps the wire positions
        k = np.int64(names[p])
        if structural and names[p + 1] == 95:
            continue
        for j in range(k):
            text[size + j] = names[p + 1 + j]
        sub_start[n_sub], sub_len[n_sub] = size, k
        size += k
        n_sub += 1
    return size, n_sub


@njit(cache=True, nogil=True)
def _verdict(text, size, sub_start, sub_len, n_sub, low, classes, tally):
    """(charset, encoded) of the text below the registered domain."""
    charset = _charset(text, 0, size, classes)
    if size < MIN_ENCODED:
        return charset, charset == BINARY
    if charset == BINARY or charset == SYMBOLS or charset == HEX or charset == BASE64:
        return charset, True
    for j in range(size):  # the whole text, or one long label of it (sods: "<62 base32>.inbi.41953-0.id-1605.up")
        low[j] = text[j] + 32 if 65 <= text[j] <= 90 else text[j]
    encoded = _random(low, 0, size, classes, tally)
    for j in range(n_sub):
        if not encoded and sub_len[j] >= MIN_RANDOM:
            encoded = _random(low, sub_start[j], sub_start[j] + sub_len[j], classes, tally)
    if encoded:
        big = np.argmax(sub_len[:n_sub])  # the first longest label
        charset = _charset(text, sub_start[big], sub_start[big] + sub_len[big], classes)
    return (RANDOM if encoded and charset == TEXT else charset), encoded


@njit(cache=True, nogil=True)
def _judge_kernel(messages, names, rules, ignored):
    label_start, hashes = np.empty(MAX_LABELS + 1, np.int64), np.empty(MAX_LABELS + 1, np.uint64)
    dotted, text, low = np.empty(MAX_NAME + 1, np.uint8), np.empty(MAX_NAME + 1, np.uint8), \
        np.empty(MAX_NAME + 1, np.uint8)
    sub_start, sub_len = np.empty(MAX_LABELS, np.int64), np.empty(MAX_LABELS, np.int64)
    classes = _byte_classes()
    tally = np.zeros(512, np.int64), np.empty((MAX_NAME + 1, MAX_NAME + 1)), np.zeros(MAX_NAME + 1, np.bool_)
    for m in range(messages.shape[0]):
        rec = messages[m]
        off = np.int64(rec.qname)
        if off < 0:
            continue
        first, end, structural = _split(names, off, (dotted, label_start, hashes), rules, ignored, rec)
        if end == 0:
            continue
        size, n_sub = _join_labels(names, off, label_start, first, end, structural, text, sub_start, sub_len)
        rec.charset, rec.encoded = _verdict(text, size, sub_start, sub_len, n_sub, low, classes, tally)
        rec.sub_length, rec.longest_label = size, sub_len[:n_sub].max() if n_sub else 0
        rec.entropy = _entropy(text, 0, size, tally)


def judge_questions(messages: np.ndarray, names: np.ndarray, rules: PublicSuffixRules) -> None:
    """Fill the question-name fields (domain ... encoded) of DNS_MESSAGE rows whose qname points into `names`."""
    items = [s.encode() for s in IGNORED_SUFFIXES]
    length = np.array([len(s) for s in items], np.int64)
    ignored = (np.frombuffer(b"".join(items), np.uint8), np.cumsum(length) - length, length)
    _judge_kernel(messages, names, (rules.suffixes, rules.kinds, rules.max_depth), ignored)


__all__ = ["IGNORED_SUFFIXES", "judge_questions"]
