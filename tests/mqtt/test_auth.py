"""Auth mode (DESIGN.md §4 "MQTT broker conventions"): devices registered
over REST connect with their token, applications with an API key; topics are
confined to the platform convention."""

from __future__ import annotations

import json

import pytest
from connstate_client import pb

from conftest import (
    DISCONNECT,
    PUBACK,
    SUBACK,
    eventually,
    V5,
    V311,
    ConnstateServer,
    publish_packet,
    subscribe_packet,
    unique,
)

pytestmark = pytest.mark.connstate

TOKEN_USER = "use-token-auth"


@pytest.fixture(scope="module")
def auth_server(work_root):
    from conftest import BROKER_KIND

    if BROKER_KIND != "connstate":
        pytest.skip("needs connstate")
    s = ConnstateServer(work_root / f"auth-{unique()}", ["--activity-interval", "100ms"], auth=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def app_key(auth_server):
    return auth_server.create_api_key("operator")


def device(server, peers, version=V5, type_id="sensor", **kw):
    """Registers a new device and connects it; returns (peer, device id)."""
    device_id = unique("d")
    token = server.register_device(type_id, device_id)
    peer = peers(server, f"d:local:{type_id}:{device_id}", version=version, username=TOKEN_USER, password=token, **kw)
    return peer, device_id


def application(server, peers, key, version=V5):
    return peers(server, f"a:local:{unique('app')}", version=version, username=key[0], password=key[1])


# -- connect -----------------------------------------------------------------


def test_registered_device_connects_and_a_wrong_token_is_refused(auth_server, peers, raw):
    device_id = unique("d1")
    cid = f"d:local:sensor:{device_id}"
    token = auth_server.register_device("sensor", device_id)

    ok = peers(auth_server, cid, version=V5, username=TOKEN_USER, password=token)
    auth_server.wait_connected(cid)
    status, body = auth_server.rest_state(cid)
    assert status == 200, body
    assert (body["connectionStatus"], body["clientType"], body["typeId"], body["deviceId"]) == (
        "connected",
        "device",
        "sensor",
        device_id,
    )
    assert body["username"] == TOKEN_USER
    ok.disconnect()
    auth_server.wait_disconnected(cid)

    # v5: CONNACK 0x86 (bad user name or password).
    bad = peers(auth_server, cid, version=V5, username=TOKEN_USER, password=token + "x", expect_success=False)
    assert bad.connack[1] == 0x86
    # v3.1.1: return code 4 (bad user name or password).
    c = raw(auth_server)
    assert c.connect(cid, username=TOKEN_USER, password="wrong-token-000000000") == b"\x00\x04"
    assert c.read_until_closed() == []

    failed = auth_server.wait_log(cid, lambda e: e.kind == pb.LOG_KIND_CONNECT_FAILED, what="connectFailed")
    assert (failed.reason_code, failed.close_code) == (0x86, 180)
    s = auth_server.wait_state(cid, lambda s: s.counters.failed_connects == 2, what="2 failed connects")
    assert s.connection_status == pb.CONNECTION_STATUS_DISCONNECTED

    status, body = auth_server.rest_state(cid)
    assert status == 200 and body["connectionStatus"] == "disconnected"
    assert body["counters"]["failedConnects"] == 2

    def rest_logs():
        status, logs = auth_server.rest("GET", f"/api/v0002/clientconnectionlogs?clientId={cid}")
        assert status == 200, logs
        entries = logs["results"]
        return entries if [e["kind"] for e in entries][:3] == ["connectFailed", "connectFailed", "disconnected"] else None

    entries = eventually(rest_logs, what="two connectFailed entries over REST")
    assert entries[0]["reasonCode"] == 0x86 and entries[0]["closeCode"] == 180


def test_unregistered_device_and_anonymous_clients_are_refused(auth_server, peers, raw):
    unknown = peers(auth_server, f"d:local:sensor:{unique('nobody')}", version=V5, username=TOKEN_USER,
                    password="some-token-0123456789", expect_success=False)
    assert unknown.connack[1] in (0x86, 0x87)
    anon = peers(auth_server, unique("plain"), version=V5, expect_success=False)
    assert anon.connack[1] in (0x85, 0x86, 0x87)


def test_client_id_of_another_org_is_refused(auth_server, peers, raw):
    device_id = unique("d")
    token = auth_server.register_device("sensor", device_id)
    cid = f"d:otherorg:sensor:{device_id}"
    bad = peers(auth_server, cid, version=V5, username=TOKEN_USER, password=token, expect_success=False)
    assert bad.connack[1] == 0x85
    c = raw(auth_server)
    assert c.connect(cid, username=TOKEN_USER, password=token) == b"\x00\x02"  # identifier rejected
    entry = auth_server.wait_log(cid, lambda e: e.kind == pb.LOG_KIND_CONNECT_FAILED, what="connectFailed")
    assert (entry.reason_code, entry.close_code) == (0x85, 166)


def test_application_with_api_key(auth_server, peers, app_key):
    app = application(auth_server, peers, app_key)
    s = auth_server.wait_connected(app.client_id)
    assert s.client_type == pb.CLIENT_TYPE_APPLICATION
    bad = peers(auth_server, f"a:local:{unique('app')}", version=V5, username=app_key[0], password="not-the-token-0000000",
                expect_success=False)
    assert bad.connack[1] == 0x86


# -- topics --------------------------------------------------------------------


def test_device_may_not_subscribe_to_monitor_topics(auth_server, peers):
    dev, device_id = device(auth_server, peers, version=V5)
    assert dev.subscribe(f"iot-2/type/sensor/id/{device_id}/mon", 0)[0] >= 0x80
    assert dev.subscribe("iot-2/type/+/id/+/mon", 0)[0] >= 0x80
    assert dev.subscribe(f"$SYS/clients/{dev.client_id}/mon", 0)[0] >= 0x80
    dev3, _ = device(auth_server, peers, version=V311)
    assert dev3.subscribe("iot-2/type/+/id/+/mon", 0) == [0x80]
    # Its own commands are fine.
    dev.subscribe_ok("iot-2/cmd/+/fmt/+", 1)


def test_application_may_not_subscribe_to_everything(auth_server, peers, raw, app_key):
    app = application(auth_server, peers, app_key)
    assert app.subscribe("#", 0)[0] >= 0x80
    assert app.subscribe("+/#", 0)[0] >= 0x80
    app.subscribe_ok("iot-2/type/+/id/+/evt/+/fmt/+", 0)
    app3 = application(auth_server, peers, app_key, version=V311)
    assert app3.subscribe("#", 0) == [0x80]


def test_device_event_reaches_application(auth_server, peers, app_key):
    dev, device_id = device(auth_server, peers, version=V311)
    app = application(auth_server, peers, app_key)
    app.subscribe_ok(f"iot-2/type/sensor/id/{device_id}/evt/+/fmt/+", 1)
    dev.publish("iot-2/evt/temp/fmt/json", json.dumps({"t": 21.5}), qos=1)
    msg = app.expect()
    assert msg.topic == f"iot-2/type/sensor/id/{device_id}/evt/temp/fmt/json"
    assert json.loads(msg.payload) == {"t": 21.5}


def test_command_reaches_only_its_device(auth_server, peers, app_key):
    dev1, id1 = device(auth_server, peers, version=V5)
    dev2, id2 = device(auth_server, peers, version=V311)
    for d in (dev1, dev2):
        d.subscribe_ok("iot-2/cmd/+/fmt/+", 1)
    app = application(auth_server, peers, app_key)
    app.publish(f"iot-2/type/sensor/id/{id1}/cmd/reboot/fmt/json", b'{"delay":0}', qos=1)
    app.publish(f"iot-2/type/sensor/id/{id2}/cmd/marker/fmt/txt", b"m", qos=1)

    msg = dev1.expect()
    assert (msg.topic, msg.payload) == ("iot-2/cmd/reboot/fmt/json", b'{"delay":0}')
    got = dev2.until("iot-2/cmd/marker/fmt/txt")
    assert [m.topic for m in got] == ["iot-2/cmd/marker/fmt/txt"]


def test_device_does_not_see_other_devices_events(auth_server, peers, app_key):
    dev1, _ = device(auth_server, peers, version=V5)
    dev2, _ = device(auth_server, peers, version=V5)
    # A device may not subscribe to events at all, its own or others'.
    assert dev2.subscribe("iot-2/type/+/id/+/evt/+/fmt/+", 0)[0] >= 0x80
    assert dev2.subscribe("iot-2/evt/+/fmt/+", 0)[0] >= 0x80
    dev1.publish("iot-2/evt/temp/fmt/json", b"{}", qos=1)
    assert dev2.quiet(0.3) == []


def test_failed_connect_on_the_monitor_topic(auth_server, peers, app_key):
    device_id = unique("d")
    auth_server.register_device("sensor", device_id)
    topic = f"iot-2/type/sensor/id/{device_id}/mon"
    app = application(auth_server, peers, app_key)
    app.subscribe_ok(topic, 0)
    peers(auth_server, f"d:local:sensor:{device_id}", version=V5, username=TOKEN_USER, password="wrong-token-0000000000",
          expect_success=False)
    msg = app.expect(topic=topic)
    body = json.loads(msg.payload)
    assert body["Action"] == "FailedConnect"
    assert msg.retain is False

    late = application(auth_server, peers, app_key)
    late.subscribe_ok(topic, 0)
    assert late.quiet(0.4) == []  # never retained


def test_suback_for_mixed_filters_in_one_subscribe(auth_server, raw):
    """One SUBSCRIBE with an allowed and a forbidden filter: per-filter codes."""
    device_id = unique("d")
    token = auth_server.register_device("sensor", device_id)
    c = raw(auth_server)
    assert c.connect(f"d:local:sensor:{device_id}", version=5, username=TOKEN_USER, password=token)[1] == 0
    c.send(subscribe_packet([("iot-2/cmd/+/fmt/+", 1), ("#", 0)], packet_id=9, version=5))
    first, body = c.read_packet()
    assert first >> 4 == SUBACK
    codes = list(body[3 + body[2]:])
    assert codes == [1, 0x87], [hex(x) for x in codes]


# -- revocation ------------------------------------------------------------------------


def test_deleting_a_connected_device_disconnects_it(auth_server, peers):
    """DESIGN.md §3: credentials revoked → disconnected by the server, 0x98,
    close code 94 (v5 clients get DISCONNECT 0x98)."""
    dev, device_id = device(auth_server, peers, version=V5)
    cid = dev.client_id
    auth_server.wait_connected(cid)
    status, body = auth_server.rest("DELETE", f"/api/v0002/device/types/sensor/devices/{device_id}")
    assert status in (200, 204), body
    from_server, reason, _ = dev.wait_disconnected(timeout=5)
    assert (from_server, reason) == (True, 0x98)
    s = auth_server.wait_disconnected(cid)
    assert (s.last_disconnect_initiator, s.last_disconnect_reason_code, s.last_close_code) == (pb.DISCONNECT_INITIATOR_SERVER, 0x98, 94)


def test_deleting_an_api_key_disconnects_its_applications(auth_server, peers):
    key = auth_server.create_api_key("operator")
    app = application(auth_server, peers, key, version=V5)
    auth_server.wait_connected(app.client_id)
    status, body = auth_server.rest("DELETE", f"/api/v0002/apikeys/{key[0]}")
    assert status in (200, 204), body
    from_server, reason, _ = app.wait_disconnected(timeout=5)
    assert (from_server, reason) == (True, 0x98)
    s = auth_server.wait_disconnected(app.client_id)
    assert (s.last_disconnect_initiator, s.last_disconnect_reason_code, s.last_close_code) == (pb.DISCONNECT_INITIATOR_SERVER, 0x98, 94)


# -- what a device may not do ---------------------------------------------------------


def refused_publish(server, raw, device_id, token, topic):
    """A v5 device publishes QoS 1 to ``topic``; returns how the broker
    refused it: ("puback", code) or ("disconnect", code)."""
    c = raw(server)
    assert c.connect(f"d:local:sensor:{device_id}", version=5, username=TOKEN_USER, password=token)[1] == 0
    c.send(publish_packet(topic, b"forged", qos=1, packet_id=3, version=5))
    p = c.read_packet(timeout=5)
    assert p is not None, "connection closed without DISCONNECT"
    first, body = p
    if first >> 4 == PUBACK:
        assert body[:2] == b"\x00\x03"
        return ("puback", body[2] if len(body) > 2 else 0)
    assert first >> 4 == DISCONNECT, p
    return ("disconnect", body[0])


@pytest.mark.parametrize(
    "topic",
    [
        "iot-2/type/sensor/id/{other}/evt/temp/fmt/json",  # another device's event
        "iot-2/type/sensor/id/{me}/evt/temp/fmt/json",  # its own, but the application form
        "iot-2/type/sensor/id/{other}/cmd/reboot/fmt/json",  # a command
        "iot-2/cmd/reboot/fmt/json",  # a command to itself
        "plain/topic",
    ],
    ids=["other-evt", "own-long-evt", "other-cmd", "own-cmd", "plain"],
)
def test_device_publish_outside_its_topics_is_refused(auth_server, raw, peers, app_key, topic):
    me, other = unique("me"), unique("other")
    token = auth_server.register_device("sensor", me)
    auth_server.register_device("sensor", other)
    app = application(auth_server, peers, app_key)
    app.subscribe_ok("iot-2/#", 1)
    how, code = refused_publish(auth_server, raw, me, token, topic.format(me=me, other=other))
    assert code == 0x87, f"{how} {code:#x}"
    # Not routed: the application (which sees every iot-2 topic) gets the
    # marker published after it, never the forged message.
    marker = f"iot-2/type/sensor/id/{other}/evt/marker/fmt/txt"
    app.publish(marker, b"m", qos=1)
    assert [m.topic for m in app.until(marker) if m.payload == b"forged"] == []


def test_monitor_user_field(auth_server, peers, app_key):
    """`User` is left out for `use-token-auth`, given for an API key."""
    device_id = unique("d")
    token = auth_server.register_device("sensor", device_id)
    watcher = application(auth_server, peers, app_key)
    watcher.subscribe_ok(f"iot-2/type/sensor/id/{device_id}/mon", 0)
    peers(auth_server, f"d:local:sensor:{device_id}", version=V311, username=TOKEN_USER, password=token)
    body = json.loads(watcher.expect().payload)
    assert body["Action"] == "Connect" and "User" not in body

    app_id = unique("app")
    watcher.subscribe_ok(f"iot-2/app/{app_id}/mon", 0)
    peers(auth_server, f"a:local:{app_id}", version=V5, username=app_key[0], password=app_key[1])
    body = json.loads(watcher.expect(topic=f"iot-2/app/{app_id}/mon").payload)
    assert (body["Action"], body["User"]) == ("Connect", app_key[0])


def test_gateway_publishes_for_its_devices_and_gets_their_commands(auth_server, peers, app_key):
    status, body = auth_server.rest("POST", "/api/v0002/device/types", {"id": "gwtype", "classId": "Gateway"})
    assert status in (201, 409), body
    gw_id = unique("gw")
    status, body = auth_server.rest("POST", "/api/v0002/device/types/gwtype/devices", {"deviceId": gw_id})
    assert status == 201, body
    assert body["clientId"] == f"g:local:gwtype:{gw_id}"
    gw = peers(auth_server, body["clientId"], version=V5, username=TOKEN_USER, password=body["authToken"])
    behind = unique("behind")
    app = application(auth_server, peers, app_key)
    app.subscribe_ok(f"iot-2/type/sensor/id/{behind}/evt/+/fmt/+", 1)
    gw.subscribe_ok("iot-2/type/+/id/+/cmd/+/fmt/+", 1)
    gw.publish(f"iot-2/type/sensor/id/{behind}/evt/temp/fmt/json", b"{}", qos=1)
    assert app.expect().topic == f"iot-2/type/sensor/id/{behind}/evt/temp/fmt/json"
    app.publish(f"iot-2/type/sensor/id/{behind}/cmd/ping/fmt/txt", b"p", qos=1)
    assert gw.expect().topic == f"iot-2/type/sensor/id/{behind}/cmd/ping/fmt/txt"
    s = auth_server.wait_connected(gw.client_id)
    assert s.client_type == pb.CLIENT_TYPE_GATEWAY


def test_kick_needs_the_operator_role(auth_server, peers):
    dev, _ = device(auth_server, peers, version=V5)
    auth_server.wait_connected(dev.client_id)
    reader = auth_server.create_api_key("read-only")
    path = f"/api/v0002/clientconnectionstates/{dev.client_id}/disconnect"
    status, body = auth_server.rest("POST", path, auth=reader)
    assert status == 403, body
    assert dev.connected.is_set()
    operator = auth_server.create_api_key("operator")
    status, body = auth_server.rest("POST", path, auth=operator)
    assert status == 202, body
    assert dev.wait_disconnected(timeout=5)[:2] == (True, 0x98)


def test_device_cannot_use_another_devices_token(auth_server, peers):
    _, id1 = device(auth_server, peers, version=V5)
    id2 = unique("d")
    token2 = auth_server.register_device("sensor", id2)
    bad = peers(auth_server, f"d:local:sensor:{id1}", version=V5, username=TOKEN_USER, password=token2, expect_success=False)
    assert bad.connack[1] == 0x86


def test_application_cannot_forge_monitor_messages(auth_server, peers, raw, app_key):
    device_id = unique("d")
    auth_server.register_device("sensor", device_id)
    topic = f"iot-2/type/sensor/id/{device_id}/mon"
    watcher = application(auth_server, peers, app_key)
    watcher.subscribe_ok(topic, 0)
    forger = application(auth_server, peers, app_key)
    info = forger.client.publish(topic, b'{"Action":"Connect"}', qos=1)
    info.wait_for_publish(5)
    forger.client.publish(f"$SYS/clients/d:local:sensor:{device_id}/mon", b'{"Action":"Connect"}', qos=1).wait_for_publish(5)
    assert watcher.quiet(0.5) == []


def test_refused_connect_does_not_take_over(auth_server, peers):
    """A CONNECT with the right client id but a wrong token is refused before
    any takeover: the connected device stays connected and recorded so."""
    dev, _ = device(auth_server, peers, version=V5)
    conn = auth_server.wait_connected(dev.client_id).connection_id
    bad = peers(auth_server, dev.client_id, version=V5, username=TOKEN_USER, password="wrong-token-0000000000",
                expect_success=False)
    assert bad.connack[1] == 0x86
    s = auth_server.wait_state(dev.client_id, lambda s: s.counters.failed_connects == 1, what="1 failed connect")
    assert (s.connection_status, s.connection_id) == (pb.CONNECTION_STATUS_CONNECTED, conn)
    assert dev.connected.is_set() and not dev.disconnected.is_set()
    dev.publish("iot-2/evt/still/fmt/txt", b"here", qos=1)


def register_typed(server, type_id: str, class_id: str) -> tuple[str, str]:
    """Registers a device under a type of `class_id`; returns (device id, token)."""
    status, body = server.rest("POST", "/api/v0002/device/types", {"id": type_id, "classId": class_id})
    assert status in (201, 409), body
    device_id = unique("c")
    status, body = server.rest("POST", f"/api/v0002/device/types/{type_id}/devices", {"deviceId": device_id})
    assert status == 201, body
    return device_id, body["authToken"]


def test_a_device_token_does_not_log_in_as_a_gateway(auth_server, peers, raw):
    """A device of a `Device`-class type presenting its own token under a
    `g:` client id is refused as not authorised (v5 0x87, v3 CONNACK 5),
    and the refusal is recorded as a failed connect."""
    device_id, token = register_typed(auth_server, "dclass", "Device")
    cid = f"g:local:dclass:{device_id}"
    bad = peers(auth_server, cid, version=V5, username=TOKEN_USER, password=token, expect_success=False)
    assert bad.connack[1] == 0x87
    c = raw(auth_server)
    assert c.connect(cid, username=TOKEN_USER, password=token) == b"\x00\x05"
    assert c.read_until_closed() == []
    entry = auth_server.wait_log(cid, lambda e: e.kind == pb.LOG_KIND_CONNECT_FAILED, what="connectFailed")
    assert entry.reason_code == 0x87, entry
    assert not any(e.kind == pb.LOG_KIND_CONNECTED for e in auth_server.logs(cid))
    # The same token under its `d:` id still works.
    peers(auth_server, f"d:local:dclass:{device_id}", version=V311, username=TOKEN_USER, password=token)


def test_a_gateway_logging_in_as_a_device_has_device_rights_only(auth_server, peers, app_key):
    """The platform lets a gateway-class device connect with `d:`; it then
    acts as a device: its own commands only, no other device's topics."""
    gw_id, token = register_typed(auth_server, "gclass", "Gateway")
    as_device = peers(auth_server, f"d:local:gclass:{gw_id}", version=V5, username=TOKEN_USER, password=token)
    assert as_device.subscribe("iot-2/type/+/id/+/cmd/+/fmt/+", 1) == [0x87]
    as_device.subscribe_ok("iot-2/cmd/+/fmt/+", 1)
    app = application(auth_server, peers, app_key)
    other = unique("other")
    app.publish(f"iot-2/type/sensor/id/{other}/cmd/reboot/fmt/txt", b"not yours", qos=1)
    app.publish(f"iot-2/type/gclass/id/{gw_id}/cmd/reboot/fmt/txt", b"yours", qos=1)
    assert as_device.expect().payload == b"yours"
    assert as_device.quiet(0.3) == []


def test_applications_read_the_broker_statistics_and_devices_do_not(auth_server, peers, app_key):
    """`$SYS/broker/...` (Mosquitto's statistics) are for applications."""
    app = application(auth_server, peers, app_key)
    app.subscribe_ok("$SYS/broker/#", 0)
    assert app.expect(topic="$SYS/broker/version").payload.startswith(b"connstate version ")
    app3 = application(auth_server, peers, app_key, version=V311)
    app3.subscribe_ok("$SYS/broker/clients/+", 0)
    assert int(app3.expect(topic="$SYS/broker/clients/connected").payload) >= 0
    dev, _ = device(auth_server, peers, version=V5)
    assert dev.subscribe("$SYS/broker/#", 0)[0] == 0x87
    assert dev.subscribe("$SYS/#", 0)[0] == 0x87
    dev3, _ = device(auth_server, peers, version=V311)
    assert dev3.subscribe("$SYS/broker/uptime", 0) == [0x80]
