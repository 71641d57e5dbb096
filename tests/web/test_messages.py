"""What the voicemail page reads from a message, the mailbox names it accepts, the ranges it
serves and the sessions it seals: bytes in, values out."""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from sipzone.model.errors import InvalidValue
from sipzone.sip import BRANCH_SECRET
from sipzone.web.mailbox import Endpoint, byte_range, describe, parse_mailbox, wav_duration
from sipzone.web.mailconfig import targets
from sipzone.web.voicemail import IDLE, LONGEST, Session, imap_endpoint, seal, unseal
from tests.dns.conftest import snapshot


def pcm(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return out.getvalue()


def gsm_wav(frames: int) -> bytes:
    """Asterisk's wav49: WAVE_FORMAT_GSM610 (0x31), 1625 octets a second, 65 per 320 samples."""
    data = b"\0" * (65 * frames)
    fmt = struct.pack("<HHIIHHHH", 0x31, 1, 8000, 1625, 65, 0, 2, 320)
    fact = struct.pack("<I", 320 * frames)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4)
            + fact + b"data" + struct.pack("<I", len(data)) + data)  # fmt: skip
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_wav_duration_of_pcm_and_gsm() -> None:
    assert wav_duration(pcm(2.5)) == pytest.approx(2.5)
    assert wav_duration(gsm_wav(250)) == pytest.approx(250 * 65 / 1625)  # 10 s
    assert wav_duration(b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\xff") is None  # no fmt first
    assert wav_duration(b"ID3 an mp3") is None
    truncated = pcm(2.0)[:-8000]  # the data chunk says more than the file holds
    assert wav_duration(truncated) == pytest.approx(1.5)


def message(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("voice message")
    msg.add_attachment(pcm(4.0), maintype="audio", subtype="x-wav", filename="msg.wav")
    return msg


def test_asterisk_headers_first() -> None:
    shown = describe(7, frozenset({"\\Seen"}), message(
        From='"Asterisk PBX" <asterisk@pbx.example.com>',
        Date="Fri, 20 Nov 2026 14:05:00 +0000",
        X_Asterisk_VM_Caller_ID_Num="2002",
        X_Asterisk_VM_Caller_ID_Name="Alice",
        X_Asterisk_VM_Duration="12",
        X_Asterisk_VM_Orig_time="1795253400",
    ))  # fmt: skip
    assert (shown.uid, shown.caller, shown.duration, shown.heard) == (7, "Alice <2002>", 12.0, True)
    assert shown.date == datetime.fromtimestamp(1795253400, UTC)


def test_older_asterisk_and_plain_mail_fall_back() -> None:
    older = describe(1, frozenset(), message(X_Asterisk_CallerID="2002"))
    assert older.caller == "2002" and older.duration == pytest.approx(4.0) and not older.heard
    plain = describe(2, frozenset(), message(
        From='"Bob" <bob@example.com>', Date="Fri, 20 Nov 2026 14:05:00 +0000"
    ))  # fmt: skip
    assert plain.caller == "Bob"
    assert plain.date == datetime(2026, 11, 20, 14, 5, tzinfo=UTC)
    assert plain.duration == pytest.approx(4.0)  # from the WAV header
    odd = describe(3, frozenset(), message(Date="not a date", X_Asterisk_VM_Duration="x"))
    assert (odd.caller, odd.date, odd.duration) == ("unknown", None, pytest.approx(4.0))


@pytest.mark.parametrize(
    ("typed", "mailbox"),
    [
        ("1001", "1001@mail.example.com"),
        (" 1001@Mail.Example.com ", "1001@mail.example.com"),
        ("alice.b+vm@voip.acme.example", "alice.b+vm@voip.acme.example"),
    ],
)
def test_mailboxes(typed: str, mailbox: str) -> None:
    assert parse_mailbox(typed, "mail.example.com") == mailbox


@pytest.mark.parametrize(
    "typed",
    [
        "", "@mail.example.com", "1001@", 'a" x', "a b", "1001\r\nA1 LOGOUT", "a{5}",
        "1001@127.0.0.1", "1001@exa mple.com", "x" * 65, "a)(", "*", "%",
    ],
)  # fmt: skip
def test_no_imap_syntax_gets_through(typed: str) -> None:
    with pytest.raises(InvalidValue, match=r"1001@example\.com"):
        parse_mailbox(typed, "mail.example.com")


def test_byte_ranges() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-", 100) == (0, 99)
    assert byte_range("bytes=10-19", 100) == (10, 19)
    assert byte_range("bytes=90-200", 100) == (90, 99)
    assert byte_range("bytes=-10", 100) == (90, 99)
    assert byte_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole
    for unsatisfiable in ("bytes=100-", "bytes=20-10"):
        with pytest.raises(ValueError):
            byte_range(unsatisfiable, 100)


def test_sessions_open_only_where_and_while_they_were_sealed() -> None:
    keyed = snapshot(settings={BRANCH_SECRET: "11" * 32})
    session = Session("1001@mail.example.com", "secret pass", 1000.0)
    cookie = seal(keyed, session, 1000.0)
    assert "secret pass" not in cookie and "1001" not in cookie
    assert unseal(keyed, cookie, 1000.0 + IDLE - 1) == session
    assert unseal(keyed, cookie, 1000.0 + IDLE + 1) is None  # idle too long
    late = seal(keyed, session, 1000.0 + LONGEST)
    assert unseal(keyed, late, 1000.0 + LONGEST + 1) is None  # signed in too long ago
    # another installation's email domain, another key, a flipped bit, no key: nothing
    assert unseal(replace(keyed, email_domain="other.example.com"), cookie, 1000.0) is None
    rekeyed = snapshot(settings={BRANCH_SECRET: "22" * 32})
    assert unseal(rekeyed, cookie, 1000.0) is None
    flipped = cookie[:20] + ("A" if cookie[20] != "A" else "B") + cookie[21:]
    assert unseal(keyed, flipped, 1000.0) is None
    assert unseal(snapshot(), cookie, 1000.0) is None
    assert unseal(keyed, "not base64 at all!", 1000.0) is None


def test_this_nodes_site_comes_first_for_sign_in_and_autoconfig() -> None:
    snap = snapshot(settings={"email_imap": "993 site-b=vm-us.example.org:10993"})
    # site-a's own host on its virtual IPs; site-b's own endpoint, resolved by name
    assert imap_endpoint(snap, "site-a") == Endpoint(
        "site-a.example.com", 993, ("192.0.2.10", "2001:db8::10")
    )
    assert imap_endpoint(snap, "site-b") == Endpoint("vm-us.example.org", 10993)
    assert targets(snap, "imap", "site-b") == [
        ("vm-us.example.org", 10993),
        ("site-a.example.com", 993),
    ]
    assert targets(snap, "submission", "site-b") == []
    down = replace(snap, sites=tuple(replace(s, healthy=s.name != "site-b") for s in snap.sites))
    assert targets(down, "imap", "site-b") == [("site-a.example.com", 993)]
