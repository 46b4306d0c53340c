// Command whoisonline prints a live table of the connected clients: a
// snapshot first, then every arrival and departure as it happens.
//
//	go run ./examples/whoisonline [-address 127.0.0.1:50051] [-api-key KEY -api-token TOKEN]
//	    [-prefix d:] [-for 10s] [-snapshot-only]
//
// The address and credentials fall back to CONNSTATE_ADDRESS,
// CONNSTATE_API_KEY and CONNSTATE_API_TOKEN.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

func main() {
	address := flag.String("address", env("CONNSTATE_ADDRESS", "127.0.0.1:50051"), "connstate gRPC address (falls back to $CONNSTATE_ADDRESS)")
	apiKey := flag.String("api-key", env("CONNSTATE_API_KEY", ""), "API key, with -api-token (falls back to $CONNSTATE_API_KEY)")
	token := flag.String("api-token", env("CONNSTATE_API_TOKEN", ""), "the API key's token (falls back to $CONNSTATE_API_TOKEN)")
	prefix := flag.String("prefix", "", "only client ids starting with this")
	duration := flag.Duration("for", 0, "stop after this long (0: until interrupted)")
	snapshotOnly := flag.Bool("snapshot-only", false, "stop after the snapshot")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	client, err := connstate.New(*address, credentials(*apiKey, *token)...)
	if err != nil {
		fail(err)
	}
	defer client.Close()

	online := map[string]*pb.ConnectionState{}
	live := false
	for ev, err := range client.Watch(ctx, connstate.WatchOptions{
		IncludeSnapshot: true,
		Filter: &pb.ConnectionStateFilter{
			ConnectionStatus: pb.ConnectionStatus_CONNECTION_STATUS_CONNECTED,
			ClientIdPrefix:   *prefix,
		},
	}) {
		if err != nil {
			if ctx.Err() != nil {
				break // -for elapsed or interrupted
			}
			fail(err)
		}
		switch ev.Kind {
		case connstate.EventResync:
			fmt.Printf("-- resynchronising (%v)\n", ev.Err)
			clear(online)
			live = false
		case connstate.EventSnapshot:
			online[ev.Change.GetClientId()] = ev.Change.GetState()
		case connstate.EventSnapshotComplete:
			fmt.Printf("== online at revision %d\n", ev.Revision)
			printTable(online)
			if *snapshotOnly {
				return
			}
			live = true
		case connstate.EventChange:
			change := ev.Change
			state := change.GetState()
			switch {
			case change.GetKind() == pb.ChangeKind_CHANGE_KIND_ALL_DELETED:
				clear(online)
				fmt.Printf("[%d] all state deleted\n", ev.Revision)
			case state.GetConnectionStatus() == pb.ConnectionStatus_CONNECTION_STATUS_CONNECTED:
				if _, known := online[state.GetClientId()]; !known && live {
					fmt.Printf("[%d] + %s from %s (%d online)\n", ev.Revision, state.GetClientId(), state.GetClientAddr(), len(online)+1)
				}
				online[state.GetClientId()] = state
			default: // disconnected or deleted
				if _, known := online[change.GetClientId()]; known {
					delete(online, change.GetClientId())
					fmt.Printf("[%d] - %s %s (%d online)\n", ev.Revision, change.GetClientId(), reason(change), len(online))
				}
			}
		}
	}
	fmt.Println("== online now")
	printTable(online)
}

func reason(change *pb.Change) string {
	if change.GetKind() == pb.ChangeKind_CHANGE_KIND_DELETED {
		return "deleted"
	}
	if msg := change.GetLogEntry().GetMessage(); msg != "" {
		return "(" + msg + ")"
	}
	return ""
}

func printTable(online map[string]*pb.ConnectionState) {
	ids := make([]string, 0, len(online))
	for id := range online {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CLIENT\tTYPE\tADDRESS\tPROTOCOL\tCONNECTED AT\tBROKER")
	for _, id := range ids {
		s := online[id]
		fmt.Fprintf(w, "%s\t%s\t%s:%d\t%s\t%s\t%s\n", id,
			strings.ToLower(strings.TrimPrefix(s.GetClientType().String(), "CLIENT_TYPE_")),
			s.GetClientAddr(), s.GetPort(),
			strings.TrimPrefix(s.GetMqttConnectProtocol().String(), "MQTT_PROTOCOL_"),
			s.GetLastConnectTime().AsTime().Format(time.DateTime), s.GetBroker())
	}
	w.Flush()
	fmt.Printf("(%d online)\n", len(ids))
}

// env is the environment variable name, or fallback when it is unset or empty.
func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// credentials are the client options of -api-key and -api-token.
func credentials(apiKey, token string) []connstate.Option {
	if (apiKey == "") != (token == "") {
		log.Fatal("give the API key and its token together (-api-key/-api-token or CONNSTATE_API_KEY/CONNSTATE_API_TOKEN)")
	}
	if apiKey == "" {
		return nil
	}
	return []connstate.Option{connstate.WithAPIKey(apiKey, token)}
}

// fail ends the program with the error, naming its status code as the
// other SDKs' examples do (UNAUTHENTICATED, ...).
func fail(err error) {
	code := strings.ToUpper(regexp.MustCompile("([a-z])([A-Z])").ReplaceAllString(status.Code(err).String(), "${1}_${2}"))
	log.Fatalf("%s: %v", code, err)
}
