// Command feed records a few made-up MQTT clients through IngestService,
// for trying the other examples:
//
//	go run ./examples/feed -addr 127.0.0.1:50051 -clients 5 -changes 6 -every 300ms
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
	"time"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "connstate gRPC address")
	clients := flag.Int("clients", 5, "devices to connect first")
	changes := flag.Int("changes", 6, "arrivals and departures afterwards")
	every := flag.Duration("every", 300*time.Millisecond, "pause between changes")
	changesOnly := flag.Bool("changes-only", false, "skip the first connects (made by an earlier run)")
	flag.Parse()

	ctx := context.Background()
	client, err := connstate.New(*addr)
	if err != nil {
		log.Fatal(err)
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
		log.Fatal(err)
	}
	log.Printf("recorded %d event(s), revision %d", resp.GetAccepted(), resp.GetRevision())
}
