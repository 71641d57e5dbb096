"""The DNS wire format's numbers, named once (RFC 1035 §4.1, RFC 6891, RFC 7871), and the walk
over a question that the responder, the rate limiter and the server share.

The responder reads and writes headers as bytes, not as a 16-bit word, so the flag bits are
given per byte: ``QR``, ``OPCODE``, ``AA``, ``TC`` and ``RD`` live in header byte 2, the rcode's
low four bits in byte 3.
"""

from __future__ import annotations

HEADER = 12  # octets of the header; the question name starts here

# Header byte 2.
QR = 0x80  # the message is a response
OPCODE = 0x78  # the four opcode bits; QUERY is 0
AA = 0x04  # authoritative answer
TC = 0x02  # truncated: ask again over TCP
RD = 0x01  # recursion desired, copied into the response
ECHOED = OPCODE | RD  # what a bare error response copies from the query's byte 2

# Header byte 3.
RCODE = 0x0F  # the rcode's low four bits; EDNS carries the upper eight in the OPT record

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended: BADVERS >> 4 in the OPT record, BADVERS & RCODE in the header

# QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT of a query we answer: one question, and maybe an OPT.
ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00\x00\x00"
ONE_QUESTION_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"
COMPRESSED = 0xC000  # the top two bits of a compression pointer; the other 14 are an offset
QNAME_POINTER = b"\xc0\x0c"  # a compression pointer to the question name, at offset 12
MAX_LABEL = 63  # a length byte above this is a pointer or an extended label type
MAX_WIRE_NAME = 255  # octets of a wire name (RFC 1035 §3.1)

CLASS_IN = 1
QTYPE_OPT, QTYPE_IXFR, QTYPE_AXFR, QTYPE_ANY = 41, 251, 252, 255
META_QTYPES = frozenset({41, 249, 250, 251, 252, 253, 254})  # never answered from the table

# The OPT pseudo-record (RFC 6891 §6.1.2): root name, TYPE 41, CLASS = UDP payload size,
# TTL = extended rcode, version and flags, then RDLENGTH and the options.  Offsets from its start.
OPT_PREFIX = b"\x00\x00\x29"  # root name and TYPE 41
OPT_PAYLOAD = 3
OPT_VERSION = 6
OPT_FLAGS = 7  # the high byte of the flags; DO is its top bit
OPT_RDLENGTH = 9
OPT_OPTIONS = 11  # octets before the first option
DO = 0x8000  # DNSSEC OK, in the 16 flag bits
DO_BYTE = DO >> 8  # the same bit in the flags' high byte

# EDNS options: code (2), length (2), data.  Client subnet (RFC 7871 §6): family (2), source
# prefix length, scope prefix length, address; offsets from the option's code.
OPTION_HEADER = 4
OPTION_ECS = 8
ECS_FAMILIES = {1: 32, 2: 128}  # family -> address bits
ECS_FAMILY = 4
ECS_SOURCE = 6
ECS_SCOPE = 7
ECS_ADDRESS = 8

UDP_MIN = 512  # what a client without EDNS accepts over UDP
TCP_MAX = 65535  # what a two-octet TCP length prefix allows


def name_end(data: bytes, i: int = HEADER) -> int:
    """Offset just past the uncompressed name at ``i`` (its zero byte included), or -1 when it
    runs past the data or holds a pointer (a question's name may not)."""
    n = len(data)
    while i < n:
        length = data[i]
        if not length:
            return i + 1
        if length > MAX_LABEL:
            return -1
        i += length + 1
    return -1


def question_end(data: bytes) -> int:
    """Offset just past the first question (name, type, class), or -1."""
    end = name_end(data) + 4
    return end if 4 <= end <= len(data) else -1
