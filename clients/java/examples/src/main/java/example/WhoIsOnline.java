package example;

import io.github.connstate.client.ConnectionWatch;
import io.github.connstate.client.ConnstateClient;
import io.github.connstate.client.WatchEvent;
import io.github.connstate.client.WatchOptions;
import io.github.connstate.v1.ChangeKind;
import io.github.connstate.v1.ConnectionState;
import io.github.connstate.v1.ConnectionStateFilter;
import io.github.connstate.v1.ConnectionStatus;
import io.grpc.StatusRuntimeException;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.Map;
import java.util.TreeMap;

/**
 * Prints a live "who is online" table: the connected clients (a snapshot), then every arrival and
 * departure as it happens.
 *
 * <pre>
 * mvn -q exec:java -Dexec.args="--address 127.0.0.1:50051 [--api-key KEY --api-token TOKEN]
 *     [--prefix d:] [--updates N] [--snapshot-only]"
 * </pre>
 *
 * The address and credentials fall back to CONNSTATE_ADDRESS, CONNSTATE_API_KEY and
 * CONNSTATE_API_TOKEN.
 */
public final class WhoIsOnline {
  private static final DateTimeFormatter TIME = DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss").withZone(ZoneOffset.UTC);

  public static void main(String[] args) {
    String address = env("CONNSTATE_ADDRESS", "127.0.0.1:50051");
    String key = env("CONNSTATE_API_KEY", null);
    String token = env("CONNSTATE_API_TOKEN", null);
    String prefix = "";
    int updates = 0;
    boolean snapshotOnly = false;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--address" -> address = value(args, ++i);
        case "--api-key" -> key = value(args, ++i);
        case "--api-token" -> token = value(args, ++i);
        case "--prefix" -> prefix = value(args, ++i);
        case "--updates" -> updates = Integer.parseInt(value(args, ++i));
        case "--snapshot-only" -> snapshotOnly = true;
        default -> usage("unknown argument " + args[i]);
      }
    }
    if ((key == null) != (token == null)) {
      usage("give the API key and its token together (--api-key/--api-token or CONNSTATE_API_KEY/CONNSTATE_API_TOKEN)");
    }
    ConnstateClient.Builder builder = ConnstateClient.builder().address(address);
    if (key != null) {
      builder.apiKey(key, token);
    }
    Map<String, ConnectionState> online = new TreeMap<>();
    int seen = 0;
    try (ConnstateClient client = builder.build();
        ConnectionWatch watch = client.watch(WatchOptions.builder()
            .includeSnapshot(true)
            .filter(ConnectionStateFilter.newBuilder()
                .setConnectionStatus(ConnectionStatus.CONNECTION_STATUS_CONNECTED)
                .setClientIdPrefix(prefix))
            .build())) {
      for (WatchEvent event : watch) {
        switch (event.type()) {
          case RESYNC -> {
            System.out.println("-- resynchronising (" + event.cause().getStatus() + ")");
            online.clear();
          }
          case SNAPSHOT -> online.put(event.clientId(), event.state());
          case SNAPSHOT_COMPLETE -> {
            System.out.println("== online at revision " + event.revision());
            System.out.println(table(online));
            if (snapshotOnly) {
              return;
            }
          }
          case CHANGE -> {
            ConnectionState state = event.state();
            String what;
            if (state != null && state.getConnectionStatus() == ConnectionStatus.CONNECTION_STATUS_CONNECTED) {
              boolean arrived = online.put(event.clientId(), state) == null;
              if (!arrived) {
                continue; // activity of a client already listed
              }
              what = "+ " + event.clientId() + " connected from " + state.getClientAddr();
            } else if (event.kind() == ChangeKind.CHANGE_KIND_ALL_DELETED) {
              online.clear();
              what = "* all state deleted";
            } else {
              if (online.remove(event.clientId()) == null) {
                continue;
              }
              what = "- " + event.clientId() + " left: "
                  + (state != null ? state.getLastDisconnectReason() : "record deleted");
            }
            System.out.printf("[rev %d] %s (%d online)%n", event.revision(), what, online.size());
            seen++;
            if (updates > 0 && seen >= updates) {
              System.out.println(table(online));
              return;
            }
          }
          case HEARTBEAT -> {}
        }
      }
    } catch (StatusRuntimeException e) {
      System.err.println("who-is-online: " + e.getStatus());
      System.exit(1);
    }
  }

  private static String table(Map<String, ConnectionState> online) {
    StringBuilder out = new StringBuilder(String.format("%-28s %-22s %-10s %s%n", "CLIENT", "ADDRESS", "PROTOCOL", "SINCE (UTC)"));
    online.forEach((id, s) -> out.append(String.format("%-28s %-22s %-10s %s%n",
        id,
        s.getClientAddr() + ":" + s.getPort(),
        s.getMqttConnectProtocol().name().replace("MQTT_PROTOCOL_", ""),
        TIME.format(Instant.ofEpochSecond(s.getLastConnectTime().getSeconds())))));
    out.append(online.size()).append(" online");
    return out.toString();
  }

  private static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  private static String value(String[] args, int i) {
    if (i >= args.length) {
      usage(args[i - 1] + " needs a value");
    }
    return args[i];
  }

  private static void usage(String problem) {
    System.err.println("who-is-online: " + problem);
    System.err.println("usage: WhoIsOnline [--address HOST:PORT] [--api-key KEY --api-token TOKEN] [--prefix P] [--updates N] [--snapshot-only]");
    System.exit(2);
  }
}
