// Command whoisonline prints a live table of the connected clients: a
// snapshot first, then every arrival and departure as it happens.
//
//	go run ./examples/whoisonline -addr 127.0.0.1:50051 [-for 10s]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "connstate gRPC address")
	apiKey := flag.String("api-key", "", "API key (with -token)")
	token := flag.String("token", "", "API token")
	prefix := flag.String("prefix", "", "only client ids starting with this")
	duration := flag.Duration("for", 0, "stop after this long (0: until interrupted)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	var opts []connstate.Option
	if *apiKey != "" {
		opts = append(opts, connstate.WithAPIKey(*apiKey, *token))
	}
	client, err := connstate.New(*addr, opts...)
	if err != nil {
		log.Fatal(err)
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
			log.Fatal(err)
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
