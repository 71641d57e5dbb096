"""RFC 4475 torture messages: every file treated as its section says.

The snapshot admits example.com, example.net, example.org and everything below them, so the
requests reach the admitted path (forwarding, or the OPTIONS answer) unless they are broken.
"""

from __future__ import annotations

import csv

import pytest

from sipzone.model.snapshot import Snapshot
from sipzone.model.tenancy import TenancyTree, Tenant
from sipzone.sip import SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.message import (
    MalformedMessage,
    Request,
    Response,
    check_contacts,
    check_request,
    check_uri,
    parse_message,
)
from sipzone.sip.values import Arrival, Listener
from tests.sip.conftest import RFC4475

MANIFEST = list(csv.DictReader((RFC4475 / "MANIFEST.tsv").open(), delimiter="\t"))
UPSTREAM = ("127.0.0.1", 5999)

# What the edge sends for each file: "forward" (to the upstream), "drop", or a status code.
EXPECTED: dict[str, str | int] = {
    # §3.1.1 valid: accepted; requests forwarded or, for OPTIONS, answered
    "wsinv.dat": "forward", "intmeth.dat": "forward", "esc01.dat": "forward",
    "escnull.dat": "forward", "esc02.dat": "forward", "lwsdisp.dat": 200,
    "longreq.dat": "forward", "dblreq.dat": "forward", "semiuri.dat": 200,
    "transports.dat": 200,
    "mpart01.dat": 403,  # valid, but its Route names a host no configuration does: not followed
    "unreason.dat": "drop", "noreason.dat": "drop",  # responses to nothing of ours
    # §3.1.2 invalid: 400 where a reply is possible (505 for the version, §3.1.2.16)
    "badinv01.dat": 400, "clerr.dat": 400, "ncl.dat": 400, "scalar02.dat": 400,
    "quotbal.dat": 400, "ltgtruri.dat": 400, "lwsruri.dat": 400, "lwsstart.dat": 400,
    "trws.dat": 400, "escruri.dat": 400, "baddate.dat": 400, "regbadct.dat": 400,
    "badaspec.dat": 400, "baddn.dat": 400, "badvers.dat": 505, "mismatch01.dat": 400,
    "mismatch02.dat": 400, "scalarlg.dat": "drop", "bigcode.dat": "drop",
    # §3.2-3.4 semantic
    "badbranch.dat": 200,  # §3.2.1: treat as an RFC 2543 transaction, still answer
    "insuf.dat": 400,  # §3.3.1
    "unkscm.dat": 416, "novelsc.dat": 416,  # §3.3.2, §3.3.3
    "unksm2.dat": "forward",  # §3.3.4: a proxy passes unknown schemes in headers on
    "bext01.dat": 420,  # §3.3.5: Proxy-Require with unknown options
    "invut.dat": "forward", "regaut01.dat": "forward",  # §3.3.6, §3.3.7: for the UAS
    "multi01.dat": 400, "mcl01.dat": 400,  # §3.3.8, §3.3.9
    "bcast.dat": "drop",  # §3.3.10: never relayed to a broadcast Via
    "zeromf.dat": 483,  # §3.3.11
    "cparam01.dat": "forward", "cparam02.dat": "forward", "regescrt.dat": "forward",
    "sdp01.dat": "forward",  # §3.3.15: the UAS answers 406, the proxy forwards
    "inv2543.dat": "forward",  # §3.4.1
}  # fmt: skip


def test_every_file_has_an_expectation() -> None:
    assert len(MANIFEST) == 49
    assert {row["file"] for row in MANIFEST} == set(EXPECTED)


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    tree = TenancyTree([Tenant("provider", upstream="sip:127.0.0.1:5999")])
    rules = []
    for base in ("example.com", "example.net", "example.org"):
        rules += [(base, "provider"), (f"*.{base}", "provider")]
    return Snapshot.build(1, tree, rules)


@pytest.mark.parametrize("row", MANIFEST, ids=lambda row: row["file"])
def test_torture_message(row: dict[str, str], snapshot: Snapshot) -> None:
    data = (RFC4475 / row["file"]).read_bytes()
    if row["class"] == "valid":
        assert isinstance(parse_message(data), Request | Response)
    listener = Listener("udp", "127.0.0.1", 5070)
    edge = Edge(SipConfig(), [listener])
    sends = edge.receive(data, Arrival(listener, ("192.0.2.99", 5060)), snapshot)
    expected = EXPECTED[row["file"]]
    if expected == "drop":
        assert sends == ()
        return
    assert len(sends) == 1
    send = sends[0]
    if expected == "forward":
        assert (send.host, send.port) == UPSTREAM
        forwarded = parse_message(send.data)
        assert isinstance(forwarded, Request)
        assert forwarded.fields[b"x-sipzone-tenant"] == b"provider"
        assert forwarded.body == parse_message(data).body
        return
    reply = parse_message(send.data)
    assert isinstance(reply, Response)
    assert reply.status == expected, reply.reason
    if expected == 420:
        assert b"noProxiesSupportThis" in reply.fields[b"Unsupported"]
    if row["class"] == "invalid":
        # The parser's checks name the problem on their own, not only through the edge.
        with pytest.raises(MalformedMessage):
            message = parse_message(data)
            assert isinstance(message, Request)
            check_request(message)
            check_uri(message.uri)
            check_contacts(message)
