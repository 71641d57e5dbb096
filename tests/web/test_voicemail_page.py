"""The voicemail pages at the email domain, in headless Chromium: sign in against Dovecot, see
the voice message, play it, mark it heard, delete it; a wrong password shows nothing of the
mailbox; the brand of the SIP domain's tenant; and, over plain HTTP, the guards (CSRF, UIDs,
the failed sign-in limiter)."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import httpx

from tests.browser import artifacts, new_page
from tests.web.conftest import (
    ACME_MAILBOX,
    ACME_PASSWORD,
    EMAIL,
    MAILBOX,
    PASSWORD,
    Voicemail,
)

ARTIFACTS = artifacts("voicemail")


def open_page(browser: Any, voicemail: Voicemail) -> Any:
    # Chromium cannot be told the test's CA: it takes any certificate, and
    # test_https_serves_the_email_domains_certificate checks which one is served
    page = new_page(browser, ignore_https_errors=True)
    page.sipzone_port = httpx.URL(voicemail.web).port
    page.goto(f"https://{EMAIL}:{page.sipzone_port}/")
    return page


def sign_in(page: Any, mailbox: str, password: str) -> None:
    page.fill("#signin input[name=mailbox]", mailbox)
    page.fill("#signin input[name=password]", password)
    page.click("#signin button")


def test_sign_in_play_mark_heard_delete(voicemail: Voicemail, browser: Any) -> None:
    page = open_page(browser, voicemail)
    assert page.url.endswith("/signin")

    sign_in(page, MAILBOX, "not the password")
    assert page.text_content("[role=alert]") == "wrong mailbox or password"
    html = page.content()
    assert "Alice" not in html and "2002" not in html and MAILBOX not in html
    assert page.locator("#messages").count() == 0
    assert not [c for c in page.context.cookies() if c["name"] == "sipzone_voicemail"]

    sign_in(page, MAILBOX, PASSWORD)
    assert page.text_content("#mailbox") == MAILBOX
    assert page.text_content("#brand") == "sipzone"  # the email domain belongs to no tenant
    [row] = page.locator("#messages tbody tr").all()
    assert "Alice <2002>" in row.locator(".caller").text_content()
    assert row.locator(".date").text_content() == "2026-11-21 09:30"
    seconds = voicemail.voice.seconds
    assert row.locator(".duration").text_content() == f"0:{round(seconds):02d}"
    cookie = next(c for c in page.context.cookies() if c["name"] == "sipzone_voicemail")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert PASSWORD not in cookie["value"]  # sealed, not merely encoded
    page.screenshot(path=str(ARTIFACTS / "messages.png"), full_page=True)

    # the player: its duration from the streamed WAV, then it plays
    duration = page.evaluate(
        """async () => {
            const audio = document.querySelector('#messages audio');
            if (!(audio.readyState >= 1)) {
                await new Promise((ok, no) => {
                    audio.addEventListener('loadedmetadata', ok, {once: true});
                    audio.addEventListener('error', () => no(audio.error.message), {once: true});
                    audio.load();
                });
            }
            return audio.duration;
        }"""
    )
    assert abs(duration - seconds) <= 0.2, (duration, seconds)
    played = page.evaluate(
        """async () => {
            const audio = document.querySelector('#messages audio');
            await audio.play();
            await new Promise(ok => {
                const done = () => audio.currentTime > 0.3 || audio.ended ? ok() : null;
                audio.addEventListener('timeupdate', done);
                audio.addEventListener('ended', ok, {once: true});
            });
            return audio.currentTime;
        }"""
    )
    assert played > 0.3
    assert "\\Seen" not in voicemail.dovecot.flags(MAILBOX)[0]  # listening marks nothing

    row.locator("form.heard button").click()
    assert page.text_content("[role=status]") == "message marked as heard"
    assert "\\Seen" in voicemail.dovecot.flags(MAILBOX)[0]
    assert page.locator("#messages tr.heard").count() == 1
    assert page.locator("form.heard").count() == 0

    page.locator("#messages form.delete button").click()
    assert page.text_content("[role=status]") == "message deleted"
    assert voicemail.dovecot.flags(MAILBOX) == []
    assert "No voice messages." in page.text_content("#messages")

    page.click("text=Sign out")
    assert page.url.endswith("/signin")
    page.goto(f"https://{EMAIL}:{page.sipzone_port}/")
    assert page.url.endswith("/signin")


def test_the_brand_of_the_mailboxs_sip_domain(voicemail: Voicemail, browser: Any) -> None:
    page = open_page(browser, voicemail)
    sign_in(page, ACME_MAILBOX, ACME_PASSWORD)
    assert page.text_content("#brand") == "Acme Voice"
    assert page.title().endswith("Acme Voice")
    assert "Alice <2002>" in page.text_content("#messages")
    page.screenshot(path=str(ARTIFACTS / "branded.png"), full_page=True)


def signed_in(voicemail: Voicemail) -> httpx.Client:
    client = voicemail.client()
    client.get("/signin")
    csrf = client.cookies["sipzone_csrf"]
    reply = client.post("/signin", data={"mailbox": "1001", "password": PASSWORD, "csrf": csrf})
    assert reply.status_code == 303  # a bare mailbox is under the email domain
    return client


def test_changes_need_the_form_and_a_uid(voicemail: Voicemail) -> None:
    with contextlib.closing(signed_in(voicemail)) as client:
        page = client.get("/")
        uid = page.text.split('data-uid="', 1)[1].split('"', 1)[0]
        csrf = client.cookies["sipzone_csrf"]
        for data, headers in (
            ({}, {}),
            ({"csrf": "x" * 43}, {}),
            ({"csrf": csrf}, {"Origin": "http://evil.example"}),
        ):
            reply = client.post(f"/messages/{uid}/delete", data=data, headers=headers)
            assert reply.status_code == 403
        assert len(voicemail.dovecot.flags(MAILBOX)) == 1
        for bad in ("1:*", "1%20(FLAGS)", "0", "-1", "4294967296"):
            assert client.post(f"/messages/{bad}/delete", data={"csrf": csrf}).status_code in (
                404,
                422,
            )
        assert len(voicemail.dovecot.flags(MAILBOX)) == 1
        # a recording in ranges, as media elements ask for it
        whole = client.get(f"/messages/{uid}/audio")
        assert whole.headers["content-type"] == "audio/wav"
        assert whole.content == voicemail.voice.wav
        part = client.get(f"/messages/{uid}/audio", headers={"Range": "bytes=4-11"})
        assert part.status_code == 206 and part.content == voicemail.voice.wav[4:12]
        assert part.headers["content-range"] == f"bytes 4-11/{len(voicemail.voice.wav)}"
        beyond = client.get(f"/messages/{uid}/audio", headers={"Range": "bytes=999999999-"})
        assert beyond.status_code == 416


def test_failed_sign_ins_are_limited_before_they_reach_imap(voicemail: Voicemail) -> None:
    # the browser at 127.0.0.2: sipzone tells Dovecot (ID x-originating-ip), which logs it
    transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=voicemail.trust)
    with voicemail.client(transport=transport) as client:
        client.get("/signin")
        csrf = client.cookies["sipzone_csrf"]
        guesses = [
            client.post("/signin", data={"mailbox": MAILBOX, "password": f"guess{i}", "csrf": csrf})
            for i in range(11)
        ]
        assert [r.status_code for r in guesses] == [401] * 10 + [429]
        # the limiter holds even the right password now
        data = {"mailbox": MAILBOX, "password": PASSWORD, "csrf": csrf}
        right = client.post("/signin", data=data)
        assert right.status_code == 429 and "sipzone_voicemail" not in right.cookies
    log = (voicemail.dovecot.where / "dovecot.log").read_text()
    failed = [line for line in log.splitlines() if "auth failed" in line]
    assert len(failed) == 10
    assert all("rip=127.0.0.2" in line for line in failed)


def test_https_serves_the_email_domains_certificate(voicemail: Voicemail) -> None:
    port = httpx.URL(voicemail.web).port
    assert port is not None
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        voicemail.trust.wrap_socket(raw, server_hostname=EMAIL) as tls,  # checks the name
    ):
        tls.sendall(f"GET /signin HTTP/1.1\r\nHost: {EMAIL}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"<h1>Voice messages</h1>" in reply
