"""Prints a live "who is online" table: the connected clients (a snapshot),
then every arrival and departure as it happens.

    python examples/who_is_online.py [--address 127.0.0.1:50051] [--prefix d:]
        [--updates N]

Credentials, when the server requires them, come from CONNSTATE_API_KEY
and CONNSTATE_TOKEN.
"""

from __future__ import annotations

import argparse
import os
import sys

from connstate_client import Client, WatchEventType, pb


def table(online: dict[str, pb.ConnectionState]) -> str:
    lines = [f"{'CLIENT':<28} {'ADDRESS':<22} {'PROTOCOL':<10} SINCE (UTC)"]
    for client_id in sorted(online):
        s = online[client_id]
        since = s.last_connect_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        protocol = pb.MqttProtocol.Name(s.mqtt_connect_protocol).removeprefix("MQTT_PROTOCOL_")
        lines.append(f"{client_id:<28} {s.client_addr + ':' + str(s.port):<22} {protocol:<10} {since}")
    lines.append(f"{len(online)} online")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--prefix", default="", help="only client ids starting with this")
    parser.add_argument("--updates", type=int, default=0, help="stop after this many changes (0: never)")
    args = parser.parse_args()

    key, token = os.environ.get("CONNSTATE_API_KEY"), os.environ.get("CONNSTATE_TOKEN")
    client = Client(args.address, api_key=key, token=token)
    online: dict[str, pb.ConnectionState] = {}
    updates = 0
    watch = client.watch(
        include_snapshot=True,
        filter={"connection_status": pb.CONNECTION_STATUS_CONNECTED, "client_id_prefix": args.prefix},
    )
    with client, watch:
        for event in watch:
            if event.type is WatchEventType.RESYNC:
                print(f"-- resynchronising ({event.reason})", flush=True)
                online.clear()
            elif event.type is WatchEventType.SNAPSHOT and event.state is not None:
                online[event.client_id] = event.state
            elif event.type is WatchEventType.SNAPSHOT_COMPLETE:
                print(f"== online at revision {event.revision}\n{table(online)}", flush=True)
            elif event.type is WatchEventType.CHANGE:
                state = event.state
                if state is not None and state.connection_status == pb.CONNECTION_STATUS_CONNECTED:
                    arrived = event.client_id not in online
                    online[event.client_id] = state
                    if not arrived:
                        continue  # activity of a client already listed
                    what = f"+ {event.client_id} connected from {state.client_addr}"
                elif event.kind == pb.CHANGE_KIND_ALL_DELETED:
                    online.clear()
                    what = "* all state deleted"
                else:
                    if online.pop(event.client_id, None) is None:
                        continue
                    reason = state.last_disconnect_reason if state is not None else "record deleted"
                    what = f"- {event.client_id} left: {reason}"
                print(f"[rev {event.revision}] {what} ({len(online)} online)", flush=True)
                updates += 1
                if args.updates and updates >= args.updates:
                    print(table(online), flush=True)
                    return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
