// Package connstate is the Go client of the connstate service: the
// connection state of every MQTT client of a fleet.
//
// It is a thin layer over the generated gRPC code in package connstatev1:
// requests and records are the generated messages, and every error is a gRPC
// status error. Check codes with status.Code:
//
//	state, err := client.Get(ctx, "d:acme:sensor:s1")
//	if status.Code(err) == codes.NotFound { ... }
//
// or with the helpers IsNotFound and IsInvalidArgument.
//
// List and Logs are iterators that follow page tokens. Watch is an iterator
// of change events that resumes after disconnects and resynchronises (with a
// snapshot) when the server no longer has the changes it would need to
// replay; see Client.Watch.
package connstate
