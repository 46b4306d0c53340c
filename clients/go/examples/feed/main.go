// Command feed records a few made-up MQTT clients through IngestService,
// for trying the other examples:
//
//	go run ./examples/feed [-address 127.0.0.1:50051] [-api-key KEY -api-token TOKEN]
//	    -clients 5 -changes 6 -every 300ms
//
// The address and credentials fall back to CONNSTATE_ADDRESS,
// CONNSTATE_API_KEY and CONNSTATE_API_TOKEN; the key needs a role that may
// ingest (an administrator's, for example).
//
// It connects -clients devices and an application, then makes -changes
// arrivals and departures, one every -every. A second run with
// -changes-only makes only the arrivals and departures.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

func main() {
	address := flag.String("address", env("CONNSTATE_ADDRESS", "127.0.0.1:50051"), "connstate gRPC address (falls back to $CONNSTATE_ADDRESS)")
	apiKey := flag.String("api-key", env("CONNSTATE_API_KEY", ""), "API key, with -api-token (falls back to $CONNSTATE_API_KEY)")
	token := flag.String("api-token", env("CONNSTATE_API_TOKEN", ""), "the API key's token (falls back to $CONNSTATE_API_TOKEN)")
	clients := flag.Int("clients", 5, "devices to connect first")
	changes := flag.Int("changes", 6, "arrivals and departures afterwards")
	every := flag.Duration("every", 300*time.Millisecond, "pause between changes")
	changesOnly := flag.Bool("changes-only", false, "skip the first connects (made by an earlier run)")
	flag.Parse()

	ctx := context.Background()
	client, err := connstate.New(*address, credentials(*apiKey, *token)...)
	if err != nil {
		fail(err)
	}
	defer client.Close()

	info := func(i int) *pb.ConnectionInfo {
		return &pb.ConnectionInfo{
			ClientAddr:       fmt.Sprintf("10.0.0.%d", 10+i),
			Port:             uint32(50000 + i),
			Secure:           true,
			Username:         "use-token-auth",
			Protocol:         pb.MqttProtocol_MQTT_PROTOCOL_V5_0,
			KeepAliveSeconds: 60,
		}
	}
	device := func(i int) string { return fmt.Sprintf("d:acme:thermostat:t%02d", i) }
	now := time.Now()
	events := []*pb.LifecycleEvent{connstate.ConnectedEvent("a:acme:dashboard", 1, now, info(0))}
	for i := 1; i <= *clients; i++ {
		events = append(events, connstate.ConnectedEvent(device(i), 1, now, info(i)))
	}
	if !*changesOnly {
		send(ctx, client, events...)
	}

	// Alternately: the oldest connected device leaves, a new one arrives.
	leave, arrive := 1, *clients+1
	for n := 0; n < *changes; n++ {
		time.Sleep(*every)
		if n%2 == 0 {
			send(ctx, client, connstate.DisconnectedEvent(device(leave), 1, time.Now(), pb.DisconnectCause_DISCONNECT_CAUSE_CLIENT_DISCONNECT))
			leave++
		} else {
			send(ctx, client, connstate.ConnectedEvent(device(arrive), 1, time.Now(), info(arrive)))
			arrive++
		}
	}
}

func send(ctx context.Context, client *connstate.Client, events ...*pb.LifecycleEvent) {
	resp, err := client.Ingest(ctx, "feed-example", events)
	if err != nil {
		fail(err)
	}
	log.Printf("recorded %d event(s), revision %d", resp.GetAccepted(), resp.GetRevision())
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
