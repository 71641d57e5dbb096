"""The web console in headless Chromium (Debian's, driven by Playwright): sign in, add a
wildcard, check a name under it, remove it, find it in the audit; white label by Host; a phone
screen.  Screenshots go to build/test-artifacts/console/ (not committed)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import Api
from tests.browser import artifacts, new_page

ARTIFACTS = artifacts("console")


def open_page(browser: Any, api: Api, host: str = "127.0.0.1", **options: Any) -> Any:
    page = new_page(browser, **options)
    page.sipzone_port = httpx.URL(api.url).port
    page.goto(f"http://{host}:{page.sipzone_port}/")
    return page


def sign_in(page: Any, token: str) -> None:
    page.fill("#signin input[name=token]", token)
    page.click("#signin button")


def test_sign_in_add_check_remove_audit(api: Api, browser: Any) -> None:
    page = open_page(browser, api)
    assert page.url.endswith("/signin")
    assert page.text_content("#brand") == "sipzone"
    sign_in(page, "sz_wrong")
    assert "unknown, revoked or expired" in page.text_content("[role=alert]")
    sign_in(page, api.tokens["provider"])
    assert "Signed in as provider" in page.text_content("main")
    cookie = next(c for c in page.context.cookies() if c["name"] == "sipzone_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # nothing for scripts to read

    page.fill("#add input[name=name]", "*.teams.example.net")
    page.click("#add button")
    assert "*.teams.example.net added" in page.text_content("[role=status]")
    assert page.locator('tr[data-name="*.teams.example.net"]').count() == 1
    page.screenshot(path=str(ARTIFACTS / "domains.png"), full_page=True)

    page.click("text=Check a name")
    page.fill("#check input[name=name]", "cust1.teams.example.net")
    page.click("#check button")
    assert "admitted" in page.text_content("#result")
    assert page.text_content("#rule") == "*.teams.example.net"
    assert page.text_content("#owner") == "provider"
    page.screenshot(path=str(ARTIFACTS / "check.png"), full_page=True)

    page.click("text=Domains")
    page.click('tr[data-name="*.teams.example.net"] button')
    assert "*.teams.example.net removed" in page.text_content("[role=status]")
    assert page.locator('tr[data-name="*.teams.example.net"]').count() == 0
    assert api.store.check("cust1.teams.example.net")[0] is None

    page.click("text=Audit")
    first = page.locator("#audit tbody tr").first.text_content()
    assert "domain.remove" in first and "*.teams.example.net" in first
    assert "in the console" in first and "127.0.0.1" in first
    page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)
    [entry] = [e for e in api.store.audit(limit=1)]
    assert (entry.op, entry.origin) == ("domain.remove", "127.0.0.1")

    page.click("text=Sites")
    assert page.locator("#sites").count() == 1
    page.click("text=Sign out")
    assert page.url.endswith("/signin")
    page.goto(page.url.replace("/signin", "/audit"))
    assert page.url.endswith("/signin")


def test_white_label_by_host(api: Api, browser: Any) -> None:
    api.store.update_tenant(
        "resa", support_email="help@resa.example", logo_url="http://127.0.0.1:9/resa.png"
    )
    api.store.update_tenant("resb", web_url="http://portal.resb.example/")
    api.store.add_domain("*.teams.resa.example.net", "resa")
    api.store.add_domain("voip.ca.resa.example.net", "ca")
    api.store.add_domain("voip.resb.example.net", "resb")
    cases = [  # host -> the brand it shows (its own, or inherited) and what must not appear
        ("x.teams.resa.example.net", "Brand RESA", "help@resa.example"),
        ("voip.ca.resa.example.net", "Brand CA", "help@resa.example"),  # support inherited
        ("portal.resb.example", "Brand RESB", None),
    ]
    for host, brand, support in cases:
        page = open_page(browser, api, host)
        assert page.url.endswith("/signin")
        assert page.text_content("#brand") == brand
        assert page.title().endswith(brand)
        html = page.content()
        for other in ("Brand RESA", "Brand RESB", "Brand CA", "Brand CB"):
            if other != brand:
                assert other not in html, (host, other)
        if support:
            assert support in page.text_content("footer")
        else:
            assert "help@resa.example" not in html
        page.screenshot(path=str(ARTIFACTS / f"signin-{host}.png"))
        page.close()

    # a web URL cannot take a name another tenant's rule admits, nor one two tenants give
    for tenant, host, brand in (
        ("cb", "x.teams.resa.example.net", "Brand RESA"),
        ("ca", "portal.shared.example", "Brand CA"),
        ("cb", "portal.shared.example", "sipzone"),
    ):
        api.store.update_tenant(tenant, web_url=f"http://{host}/")
        page = open_page(browser, api, host)
        assert page.text_content("#brand") == brand
        others = {"Brand RESA", "Brand RESB", "Brand CA", "Brand CB"} - {brand}
        assert not [other for other in others if other in page.content()], host
        page.close()
    api.store.update_tenant("ca", web_url="")

    # resa's portal: resb's token does not belong there; resa's does and sees its own only
    page = open_page(browser, api, "x.teams.resa.example.net")
    sign_in(page, api.tokens["resb"])
    assert "does not belong to this portal" in page.text_content("[role=alert]")
    sign_in(page, api.tokens["resa"])
    names = page.locator("#domains tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == ["*.teams.resa.example.net", "voip.ca.resa.example.net"]
    html = page.content()
    assert "resb" not in html and "Brand RESB" not in html and "cb" not in page.text_content("main")
    page.close()


def test_phone_screen(api: Api, browser: Any) -> None:
    api.store.add_domain("a-rather-long-name.of.a.customer.teams.example.net", "provider")
    page = open_page(browser, api, viewport={"width": 375, "height": 740}, is_mobile=True)
    sign_in(page, api.tokens["provider"])
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375, width  # no sideways scrolling
    assert page.locator("#add button").is_visible()
    page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)


def test_forms_refuse_cross_site_posts(api: Api) -> None:
    with httpx.Client(base_url=api.url, follow_redirects=False) as c:
        c.get("/signin")
        csrf = c.cookies["sipzone_csrf"]
        r = c.post("/signin", data={"token": api.tokens["provider"], "csrf": csrf})
        assert r.status_code == 303
        revision = api.store.revision()
        # no CSRF field, a wrong one, or a foreign Origin: refused, nothing written
        for data, headers in (
            ({"name": "evil.example.net"}, {}),
            ({"name": "evil.example.net", "csrf": "x" * 43}, {}),
            ({"name": "evil.example.net", "csrf": csrf}, {"Origin": "http://evil.example"}),
        ):
            r = c.post("/domains/add", data=data, headers=headers)
            assert (r.status_code == 422 and "another site" in r.text) or "stale" in r.text
        assert api.store.revision() == revision
        r = c.post("/domains/add", data={"name": "fine.example.net", "csrf": csrf})
        assert r.status_code == 303 and api.store.revision() == revision + 1


def test_console_search_and_paging(api: Api) -> None:
    import re

    for i in range(60):
        api.store.add_domain(f"c{i:02d}.example.net", "resa")
    api.store.add_domain("voip.example.org", "resb")
    with httpx.Client(base_url=api.url, follow_redirects=True) as c:
        c.get("/signin")
        c.post("/signin", data={"token": api.tokens["resa"], "csrf": c.cookies["sipzone_csrf"]})

        def names(html: str) -> list[str]:
            return re.findall(r'<tr data-name="([^"]+)">', html)

        first = c.get("/").text
        assert names(first) == [f"c{i:02d}.example.net" for i in range(50)]
        following = re.search(r'<a href="([^"]+)" id="next">', first)
        assert following is not None
        second = c.get(following.group(1).replace("&amp;", "&")).text
        assert names(second) == [f"c{i:02d}.example.net" for i in range(50, 60)]
        assert 'id="next"' not in second
        assert names(c.get("/", params={"prefix": "c5"}).text) == [
            f"c5{i}.example.net" for i in range(10)
        ]
        assert names(c.get("/", params={"suffix": ".example.org"}).text) == []  # resb's
        r = c.get("/", params={"cursor": "forged!"})
        assert r.status_code == 422 and "cursor" in r.text
