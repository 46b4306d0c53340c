package connstate

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

// ConnectedEvent builds the event of an accepted connection, for Ingest.
// connectionID must grow with every connection of the client.
func ConnectedEvent(clientID string, connectionID uint64, at time.Time, info *pb.ConnectionInfo) *pb.LifecycleEvent {
	return &pb.LifecycleEvent{
		ClientId:     clientID,
		Time:         timestamppb.New(at),
		ConnectionId: connectionID,
		Event:        &pb.LifecycleEvent_Connected{Connected: &pb.Connected{Info: info}},
	}
}

// DisconnectedEvent builds the event of a connection that ended.
func DisconnectedEvent(clientID string, connectionID uint64, at time.Time, cause pb.DisconnectCause) *pb.LifecycleEvent {
	return &pb.LifecycleEvent{
		ClientId:     clientID,
		Time:         timestamppb.New(at),
		ConnectionId: connectionID,
		Event:        &pb.LifecycleEvent_Disconnected{Disconnected: &pb.Disconnected{Cause: cause}},
	}
}

// ActivityEvent builds the event of something a client did on an open
// connection (publish, subscribe, unsubscribe, ping).
func ActivityEvent(clientID string, connectionID uint64, at time.Time, kind pb.ActivityKind) *pb.LifecycleEvent {
	return &pb.LifecycleEvent{
		ClientId:     clientID,
		Time:         timestamppb.New(at),
		ConnectionId: connectionID,
		Event:        &pb.LifecycleEvent_Activity{Activity: &pb.Activity{Kind: kind}},
	}
}

// ConnectFailedEvent builds the event of a refused connection attempt.
func ConnectFailedEvent(clientID string, at time.Time, info *pb.ConnectionInfo, failure pb.ConnectFailure) *pb.LifecycleEvent {
	return &pb.LifecycleEvent{
		ClientId: clientID,
		Time:     timestamppb.New(at),
		Event:    &pb.LifecycleEvent_ConnectFailed{ConnectFailed: &pb.ConnectFailed{Info: info, Failure: failure}},
	}
}
