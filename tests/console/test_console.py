"""The web console in a real browser (headless chromium through selenium)
against the real server in auth mode, with a real MQTT client.

One scenario, in the order a person would go: the overview asks for a
sign-in; an operator signs in and sees the overview; filters the clients
table; an MQTT client connects and its row turns connected within a
second; its page shows its log; the operator disconnects it; a read-only
key sees no Disconnect button; the API docs render; the console fits a
phone's width. A screenshot of each page is saved.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

BIN = os.environ["CONNSTATE_BIN"]
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", "screenshots"))
ADMIN = ("a-local-consoletestadmin", "console-test-admin-token-0123456789")
WAIT = 10  # seconds, the bound of every wait but the live-row one


class Server:
    """`connstate serve` in auth mode on free ports."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="connstate-console-")
        self.proc = subprocess.Popen(
            [
                BIN, "serve", "--data-dir", self.dir,
                "--grpc-listen", "127.0.0.1:0", "--rest-listen", "127.0.0.1:0",
                "--mqtt-listen", "127.0.0.1:0", "--mqtt-ws-listen", "127.0.0.1:0",
                "--auth", "true", "--admin-key", ADMIN[0], "--admin-token", ADMIN[1],
            ],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout], daemon=True).start()
        self.rest = self.mqtt = self.console = None
        deadline = time.monotonic() + WAIT
        while self.console is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic())).strip()
            if line.startswith("connstate rest listening on "):
                self.rest = "http://" + line.rsplit(" ", 1)[1]
            elif line.startswith("connstate mqtt listening on "):
                host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
                self.mqtt = (host, int(port))
            elif line.startswith("connstate console at "):
                self.console = line.rsplit(" ", 1)[1]

    def call(self, method: str, path: str, body: dict | None = None, creds=ADMIN) -> dict:
        auth = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        request = urllib.request.Request(
            self.rest + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            text = response.read()
            return json.loads(text) if text else {}

    def key(self, role: str) -> tuple[str, str]:
        created = self.call("POST", "/api/v0002/apikeys", {"role": role, "description": f"console test {role}"})
        return created["key"], created["token"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """A paho-mqtt 5 application client with an API key."""

    def __init__(self, server: Server, client_id: str, creds: tuple[str, str]) -> None:
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.reason = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(*creds)
        self.c.on_connect = lambda c, u, f, rc, p: rc == 0 and self.connected.set()
        self.c.on_disconnect = self._gone
        self.server = server

    def _gone(self, c, u, flags, rc, props) -> None:
        self.reason = rc
        self.disconnected.set()

    def connect(self) -> None:
        self.connected.clear()
        self.disconnected.clear()
        self.c.connect(*self.server.mqtt, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(WAIT), "CONNACK"

    def disconnect(self) -> None:
        self.c.disconnect()
        assert self.disconnected.wait(WAIT)
        self.c.loop_stop()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def wait(driver, condition, timeout=WAIT, message=""):
    ignored = (NoSuchElementException, StaleElementReferenceException, IndexError)
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.02, ignored_exceptions=ignored).until(
            lambda d: condition(d), message
        )
    except TimeoutException:
        shot(driver, "failed-wait")
        raise AssertionError(f"{message or 'condition'} not met within {timeout} s; the page says:\n"
                             + driver.find_element(By.TAG_NAME, "body").text) from None


def log_rows(driver) -> list[tuple[str, str]]:
    """(kind, text) of each row of the client's log, read in one go (the
    page redraws as the client changes)."""
    return wait(
        driver,
        lambda d: [(r.get_attribute("data-kind"), r.text) for r in d.find_elements(By.CSS_SELECTOR, "#log tbody tr")],
    )


def shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def sign_in(driver, creds) -> None:
    key = wait(driver, lambda d: d.find_element(By.ID, "key"))
    key.clear()
    key.send_keys(creds[0])
    driver.find_element(By.ID, "token").send_keys(creds[1])
    driver.find_element(By.ID, "signin").click()
    wait(driver, lambda d: creds[0] in d.find_element(By.ID, "who").text, message="signed in")


def row_status(driver, client_id: str) -> str | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#clients tr[data-id="{client_id}"]')
    return rows[0].get_attribute("data-status") if rows else None


def csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_the_console_end_to_end(server: Server, browser) -> None:
    d = browser
    operator = server.key("operator")
    reader = server.key("read-only")
    watched = "a:local:console-watched"
    client = Client(server, watched, operator)
    # Known to the server before the page opens: connected once, now gone.
    client.connect()
    client.disconnect()

    # The overview asks for a sign-in; nothing is in the URL or the storage.
    d.get(server.console)
    wait(d, lambda d: d.find_element(By.ID, "signin"))
    shot(d, "1-sign-in")
    sign_in(d, operator)
    assert operator[1] not in d.current_url
    assert d.execute_script("return localStorage.length") == 0
    wait(d, lambda d: d.find_element(By.ID, "connected-total").text == "0")
    wait(d, lambda d: d.find_element(By.ID, "live").text == "live")
    assert d.find_element(By.ID, "flappers").text.count(watched) == 1
    shot(d, "2-overview")

    # The table, filtered to the client.
    d.find_element(By.CSS_SELECTOR, '[data-nav="clients"]').click()
    prefix = wait(d, lambda d: d.find_element(By.ID, "f-clientIdPrefix"))
    prefix.send_keys("a:local:console-")
    Select(d.find_element(By.ID, "f-clientType")).select_by_value("application")
    d.find_element(By.ID, "apply").click()
    wait(d, lambda d: row_status(d, watched) == "disconnected")
    wait(d, lambda d: d.find_element(By.ID, "live").text == "live")
    assert len(d.find_elements(By.CSS_SELECTOR, "#clients tbody tr")) == 1

    # Connects: the row turns connected within a second of the CONNACK.
    client.connect()
    started = time.monotonic()
    wait(d, lambda d: row_status(d, watched) == "connected", timeout=1.0, message="row connected within 1 s")
    print(f"row turned connected {time.monotonic() - started:.3f} s after the CONNACK")
    shot(d, "3-clients")

    # Sorting keeps the filters.
    d.find_element(By.CSS_SELECTOR, 'button[data-sort="lastConnectTime"]').click()
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, 'th[aria-sort="descending"]'))
    wait(d, lambda d: row_status(d, watched) == "connected")

    # Its page: state and the log, newest first.
    d.find_element(By.LINK_TEXT, watched).click()
    wait(d, lambda d: d.find_element(By.ID, "client-id").text == watched)
    wait(d, lambda d: len(log_rows(d)) >= 3)
    rows = log_rows(d)
    assert [k for k, _ in rows[:3]] == ["connected", "disconnected", "connected"], rows
    assert "Connected from 127.0.0.1" in rows[0][1] and "MQTT 5.0" in rows[0][1], rows[0]
    assert "client" in rows[1][1] and "0x00" in rows[1][1], rows[1]
    shot(d, "4-client")

    # The operator disconnects it, after confirming.
    wait(d, lambda d: d.find_element(By.ID, "disconnect")).click()
    wait(d, lambda d: d.find_element(By.ID, "confirm").is_displayed())
    d.find_element(By.ID, "confirm-yes").click()
    assert client.disconnected.wait(WAIT), "the MQTT client was disconnected"
    wait(d, lambda d: log_rows(d)[0][0] == "disconnected")
    top = log_rows(d)[0][1]
    assert "server" in top and "0x98" in top and "94" in top, top
    assert not d.find_elements(By.ID, "disconnect"), "no button once disconnected"
    client.c.loop_stop()

    # A read-only key sees the connected client but no Disconnect button.
    client = Client(server, watched, operator)
    client.connect()
    d.find_element(By.CSS_SELECTOR, "#who button").click()
    sign_in(d, reader)
    d.get(server.console + "#/client/" + watched)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#state .badge.connected"))
    assert not d.find_elements(By.ID, "disconnect")
    shot(d, "5-client-read-only")
    client.disconnect()

    # The API docs, linked from the console, render the document.
    d.find_element(By.LINK_TEXT, "API docs").click()
    wait(d, lambda d: "connstate" in d.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    shot(d, "6-api-docs")

    # At a phone's width nothing scrolls sideways but the tables.
    d.set_window_size(390, 844)
    d.get(server.console)
    wait(d, lambda d: d.find_element(By.ID, "connected-total"))
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(d, "7-overview-phone")

    assert csp_violations(d) == []
