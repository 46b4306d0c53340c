"""Prints a live "who is online" table: the connected clients (a snapshot),
then every arrival and departure as it happens.

    python examples/who_is_online.py [--address HOST:PORT]
        [--api-key KEY --api-token TOKEN] [--prefix d:] [--updates N]
        [--snapshot-only]

The address and credentials fall back to CONNSTATE_ADDRESS,
CONNSTATE_API_KEY and CONNSTATE_API_TOKEN (the address to 127.0.0.1:50051).
"""

from __future__ import annotations

import argparse
import os
import sys

from connstate_client import Client, ConnstateError, WatchEventType, pb


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
    env = os.environ.get
    parser.add_argument("--address", default=env("CONNSTATE_ADDRESS") or "127.0.0.1:50051")
    parser.add_argument("--api-key", default=env("CONNSTATE_API_KEY") or None, help="API key (with --api-token)")
    parser.add_argument("--api-token", default=env("CONNSTATE_API_TOKEN") or None, help="the API key's token")
    parser.add_argument("--prefix", default="", help="only client ids starting with this")
    parser.add_argument("--updates", type=int, default=0, help="stop after this many changes (0: never)")
    parser.add_argument("--snapshot-only", action="store_true", help="stop after the snapshot")
    args = parser.parse_args()
    if (args.api_key is None) != (args.api_token is None):
        parser.error("give the API key and its token together")

    try:
        return watch(args)
    except ConnstateError as e:
        print(f"who-is-online: {e}", file=sys.stderr)
        return 1


def watch(args: argparse.Namespace) -> int:
    client = Client(args.address, api_key=args.api_key, token=args.api_token)
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
                if args.snapshot_only:
                    return 0
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
