"""The staging form: a marketer fills it in real headless Chromium and the lead travels the
real path (signed vendor request -> intake -> ledger -> worker -> sandbox HubSpot and Slack);
and what staging refuses, checked over plain HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.config import Settings, settings_from_dict
from bridge.ledger import Ledger, Status, open_ledger
from bridge.worker import Worker

from .conftest import ROOT, SECRET, Sandbox, served

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_TIMEOUT_SECONDS = 900
# What works headless as root on a machine without internet: no sandbox (root), no GPU,
# and nothing that phones home (QUIC, component updates, sync, background fetches).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
)


def install_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver; None when done, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "installing chromium needs root (apt-get)"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install chromium with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=APT_TIMEOUT_SECONDS, check=True)
        except subprocess.CalledProcessError as exc:
            return f"`{' '.join(command)}` failed ({exc.returncode}): {exc.stderr.decode(errors='replace')[-500:]}"
        except (subprocess.TimeoutExpired, OSError) as exc:
            return f"`{' '.join(command)}` failed: {exc}"
    return None if CHROMIUM.exists() and CHROMEDRIVER.exists() else "apt-get ran but chromium is still missing"


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the session, driven by Selenium through Debian's chromedriver."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (it is in setup.cfg's test extra: pip install -e '.[test]')"
    )
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        problem = install_chromium()
        if problem:
            pytest.skip(f"no headless browser: {problem}")
    options = webdriver.ChromeOptions()
    # Explicit browser and driver paths, so Selenium Manager never tries to download either.
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def staging_settings(config_data: dict[str, Any]) -> Settings:
    config_data["server"]["staging"] = True
    return settings_from_dict(config_data, ROOT)


@pytest.fixture
def staging(staging_settings: Settings) -> Iterator[str]:
    with served(staging_settings) as url:
        yield url


@pytest.fixture
def staging_ledger(staging_settings: Settings) -> Ledger:
    return open_ledger(staging_settings.ledger)


def test_a_form_filled_in_chromium_becomes_one_contact_and_one_message(
    browser: Any, staging: str, staging_settings: Settings, staging_ledger: Ledger, sandbox: Sandbox
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15)
    browser.get(f"{staging}/staging/typeform")
    send = wait.until(ec.element_to_be_clickable((By.ID, "send")))
    assert browser.find_element(By.ID, "staging-banner").text.startswith("STAGING.")
    email_input = browser.find_element(By.NAME, "email")
    # Each input is labelled with its canonical field and the key the connector produces.
    label = browser.find_element(By.CSS_SELECTOR, f"label[for='{email_input.get_attribute('id')}']")
    assert label.text == "email email"
    typed = {
        "email": "  Maria.Lopez@Lopez-Roofing.com ",
        "phone": "(415) 555-0187",
        "first_name": "Maria",
        "last_name": "Lopez",
        "service": "Roof repair",
    }
    for name, value in typed.items():
        browser.find_element(By.NAME, name).send_keys(value)
    send.click()

    delivery_id = wait.until(ec.visibility_of_element_located((By.ID, "delivery-id"))).text
    assert delivery_id.startswith("dlv_")
    assert browser.find_element(By.ID, "duplicate").text == "no"
    assert f"leadbridge show {delivery_id}" in browser.find_element(By.TAG_NAME, "main").text
    assert SECRET not in browser.page_source
    # Written to the ledger by intake, and nothing sent before the worker runs.
    assert staging_ledger.get(delivery_id).status == Status.RECEIVED
    assert sandbox.state()["requests"] == []

    assert Worker(staging_settings, staging_ledger).drain() == 1

    contacts = sandbox.state()["contacts"]
    assert len(contacts) == 1, contacts
    expected = {
        "email": "maria.lopez@lopez-roofing.com",
        "phone": "+14155550187",
        "firstname": "Maria",
        "lastname": "Lopez",
        "service": "Roof repair",
    }
    assert {k: contacts[0]["properties"].get(k) for k in expected} == expected
    messages = sandbox.state()["messages"]
    summary = [(m["channel"], m["text"].split(" from ")[0]) for m in messages]
    assert summary == [("#leads", "WARM lead (40): Maria Lopez +1 415-555-0187 (Roof repair)")], messages
    assert staging_ledger.get(delivery_id).status == Status.DELIVERED


def test_staging_is_off_unless_configured(intake: str) -> None:
    response = requests.get(f"{intake}/staging/typeform", timeout=5)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_the_index_links_each_configured_source(staging: str) -> None:
    response = requests.get(f"{staging}/staging/", timeout=5)
    assert response.status_code == 200
    assert '<a href="/staging/typeform">typeform</a> (typeform)' in response.text


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("GET", "/staging/nowhere", 404, "404 unknown_source: No source named &#39;nowhere&#39; is configured"),
        ("POST", "/staging/nowhere", 404, "404 unknown_source: No source named &#39;nowhere&#39; is configured"),
        ("GET", "/staging/typeform?form=nope", 404, "404 unknown_form: Source &#39;typeform&#39; has no form &#39;nope&#39;"),
    ],
    ids=["get-unknown-source", "post-unknown-source", "unknown-form"],
)
def test_nothing_to_try_is_a_404_page(staging: str, method: str, path: str, status: int, says: str) -> None:
    response = requests.request(method, f"{staging}{path}", data={"email": "a@b.co"}, timeout=5)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert says in _error_text(response.text)


def test_without_a_secret_sending_is_a_503_and_nothing_is_stored(
    staging: str, staging_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TYPEFORM_SECRET")
    page = requests.get(f"{staging}/staging/typeform", timeout=5)
    assert "No secret is set for this source (TYPEFORM_SECRET): sending will fail." in page.text
    posted = {"email": "maria@lopez-roofing.com", "csrf_token": _token(page.text)}
    response = requests.post(f"{staging}/staging/typeform", data=posted, timeout=5)
    assert response.status_code == 503
    assert _error_text(response.text) == (
        "503 no_secret: Source &#39;typeform&#39; has no secret: set TYPEFORM_SECRET and restart the relay."
    )
    assert staging_ledger.deliveries() == []


def test_pages_escape_what_was_typed_and_never_show_the_secret(staging: str, staging_ledger: Ledger) -> None:
    form = requests.get(f"{staging}/staging/typeform", timeout=5)
    typed = {"email": "maria@lopez-roofing.com", "first_name": "<script>alert(1)</script>", "budget": ""}
    typed["csrf_token"] = _token(form.text)
    response = requests.post(f"{staging}/staging/typeform", data=typed, timeout=5)
    assert (form.status_code, response.status_code) == (200, 200)
    for page in (form.text, response.text):
        assert SECRET not in page
    assert "<script>" not in response.text
    assert '<th scope="row">first_name</th><td>&lt;script&gt;alert(1)&lt;/script&gt;</td>' in response.text
    delivery_id = response.text.split('id="delivery-id">')[1].split("<")[0]
    # What intake stored is the vendor's shape, with the empty input left out.
    assert b'"ref": "budget"' not in staging_ledger.get(delivery_id).body


def test_a_chosen_form_is_sent_with_its_form_key_and_mapped_by_its_mapping(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    config_data["server"]["staging"] = True
    config_data["sources"][0]["forms"] = {"cb-form": str(ROOT / "mappings/typeform-callback.yaml")}
    settings = settings_from_dict(config_data, ROOT)
    with served(settings) as url:
        index = requests.get(f"{url}/staging/", timeout=5)
        form = requests.get(f"{url}/staging/typeform", params={"form": "cb-form"}, timeout=5)
        typed = {"name": "maria lopez", "phone": "415 555 0187", "csrf_token": _token(form.text)}
        response = requests.post(f"{url}/staging/typeform", params={"form": "cb-form"}, data=typed, timeout=5)
    assert '; forms: <a href="/staging/typeform?form=cb-form">cb-form</a>' in index.text
    # One input for a key two rules read (a full name split in two).
    assert '<label for="field-2">first_name, last_name <code>name</code></label>' in form.text
    assert 'action="/staging/typeform?form=cb-form"' in form.text
    rows = response.text.split('<table id="lead">')[1].split("</table>")[0]
    assert [line for line in rows.splitlines() if line] == [
        '<tr><th scope="row">phone</th><td>+14155550187</td></tr>',
        '<tr><th scope="row">first_name</th><td>maria</td></tr>',
        '<tr><th scope="row">last_name</th><td>lopez</td></tr>',
        '<tr><th scope="row">service</th><td>callback</td></tr>',
    ]
    delivery_id = response.text.split('id="delivery-id">')[1].split("<")[0]
    body = json.loads(open_ledger(settings.ledger).get(delivery_id).body)
    assert body["form_response"]["form_id"] == "cb-form"


# Every connector's own request shape, signed or keyed its own way (Google puts its key in
# the body, WordPress in a header or the query): none of it may leak into the page.
OTHER_SOURCES = [
    ({"type": "google", "mapping": "mappings/google.yaml"}, {"EMAIL": "maria@lopez-roofing.com", "FIRST_NAME": "Maria"}),
    (
        {"type": "wordpress", "mapping": "mappings/wordpress-gravity.yaml", "options": {"plugin": "gravity"}},
        {"2": "maria@lopez-roofing.com", "1.3": "Maria"},
    ),
    (
        {"type": "wordpress", "mapping": "mappings/wordpress-elementor.yaml", "options": {"plugin": "elementor"}},
        {"Email": "maria@lopez-roofing.com"},
    ),
]


@pytest.mark.parametrize(("source", "typed"), OTHER_SOURCES, ids=["google", "gravity", "elementor"])
def test_every_source_type_goes_through_intake_without_showing_its_secret(
    config_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch, source: dict[str, Any], typed: dict[str, str]
) -> None:
    secret = "staging-other-secret-5f2c"
    monkeypatch.setenv("OTHER_SECRET", secret)
    config_data["server"]["staging"] = True
    config_data["sources"].append(
        {"name": "other", "secret_env": "OTHER_SECRET", **source, "mapping": str(ROOT / source["mapping"])}
    )
    settings = settings_from_dict(config_data, ROOT)
    with served(settings) as url:
        form = requests.get(f"{url}/staging/other", timeout=5)
        response = requests.post(f"{url}/staging/other", data={**typed, "csrf_token": _token(form.text)}, timeout=5)
    assert [form.status_code, response.status_code] == [200, 200], response.text
    assert all(f'name="{key}"' in form.text for key in typed)
    assert secret not in form.text and secret not in response.text
    delivery_id = response.text.split('id="delivery-id">')[1].split("<")[0]
    delivery = open_ledger(settings.ledger).get(delivery_id)
    assert (delivery.source, delivery.status) == ("other", Status.RECEIVED)
    assert '<th scope="row">email</th><td>maria@lopez-roofing.com</td>' in response.text


def test_an_intake_refusal_is_shown_with_its_status(config_data: dict[str, Any], sandbox: Sandbox) -> None:
    # A small body limit: the form post fits, the Typeform JSON built from it does not.
    config_data["server"].update(staging=True, max_body_bytes=500)
    with served(settings_from_dict(config_data, ROOT)) as url:
        form = requests.get(f"{url}/staging/typeform", timeout=5)
        posted = {"email": "maria@lopez-roofing.com", "message": "x" * 200, "csrf_token": _token(form.text)}
        response = requests.post(f"{url}/staging/typeform", data=posted, timeout=5)
    assert response.status_code == 413
    assert _error_text(response.text) == "413 body_too_large: body is over 500 bytes"


def _token(page: str) -> str:
    """The form's signed token, as a browser would send it back."""
    return page.split('name="csrf_token" value="')[1].split('"')[0]


def _error_text(page: str) -> str:
    """The #error element's text, tags dropped (entities kept, as the page has them)."""
    inner = page.split('<div id="error" role="alert">')[1].split("</div>")[0]
    for tag in ("<strong>", "</strong>", "<code>", "</code>"):
        inner = inner.replace(tag, "")
    return inner
