package connstate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

// Client is a connection to a connstate server. It is safe for concurrent
// use. Close it when done.
type Client struct {
	conn   *grpc.ClientConn
	states pb.ConnectionStateServiceClient
	ingest pb.IngestServiceClient
	admin  pb.AdminServiceClient
}

type options struct {
	tls         *tls.Config
	tlsErr      error
	apiKey      string
	token       string
	credentials bool
	block       bool
	dialOptions []grpc.DialOption
}

// Option configures Dial.
type Option func(*options)

// WithAPIKey sends the API key and token with every call, as the metadata
// `authorization: Basic base64(key:token)`.
func WithAPIKey(apiKey, token string) Option {
	return func(o *options) {
		o.apiKey, o.token, o.credentials = apiKey, token, true
	}
}

// WithTLS connects over TLS with the given configuration; nil uses the
// system's root certificates. The default is plaintext.
func WithTLS(config *tls.Config) Option {
	return func(o *options) {
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.tls = config
	}
}

// WithRootCA connects over TLS and trusts the PEM-encoded root
// certificate(s) given instead of the system's.
func WithRootCA(pem []byte) Option {
	return func(o *options) {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			o.tlsErr = errors.New("connstate: no certificate found in the root CA PEM")
			return
		}
		o.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
}

// WithBlock makes Dial wait until the connection is ready (or ctx ends).
// By default Dial returns at once and connects in the background.
func WithBlock() Option {
	return func(o *options) { o.block = true }
}

// WithDialOptions adds gRPC dial options; they are applied after the ones
// Dial sets, so they can override them.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// basicAuth is the per-call credential of WithAPIKey.
type basicAuth struct{ header string }

func (b basicAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": b.header}, nil
}

// RequireTransportSecurity is false: the server may be plaintext (local
// deployments and tests).
func (basicAuth) RequireTransportSecurity() bool { return false }

// New creates a client of the server at address ("host:port") with
// grpc.NewClient: it connects on the first call, and reconnects by itself
// after the server went away. Options WithBlock has no effect here (see Dial).
//
// address may be a comma-separated list of servers ("a:50051,b:50051"): the
// client uses the first that answers and, when it goes away, the next one
// (gRPC's pick_first over the list). A watch then resumes on the next server
// from the last revision it delivered; the reads (Get, List, Logs,
// Settings, CurrentRevision) are retried on UNAVAILABLE, so on the next
// server. Writes are not retried: IngestEvents is not idempotent (a batch
// that was committed before the connection broke would be recorded twice),
// and a retried delete could answer NOT_FOUND for its own success. See
// clients/CONTRACT.md ("Several addresses").
func New(address string, opts ...Option) (*Client, error) {
	conn, _, err := newConn(address, opts)
	if err != nil {
		return nil, err
	}
	return NewClient(conn), nil
}

// Dial is New, and with WithBlock it waits until the connection is ready
// (or ctx ends).
func Dial(ctx context.Context, address string, opts ...Option) (*Client, error) {
	conn, o, err := newConn(address, opts)
	if err != nil {
		return nil, err
	}
	if o.block {
		conn.Connect()
		for {
			state := conn.GetState()
			if state == connectivity.Ready {
				break
			}
			if !conn.WaitForStateChange(ctx, state) {
				conn.Close()
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
	}
	return NewClient(conn), nil
}

func newConn(address string, opts []Option) (*grpc.ClientConn, options, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.tlsErr != nil {
		return nil, o, o.tlsErr
	}
	transport := insecure.NewCredentials()
	if o.tls != nil {
		transport = credentials.NewTLS(o.tls)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		// Reconnect soon after a server restart (the default backoff starts
		// at 1 s and grows to 2 min).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   5 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if o.credentials {
		raw := base64.StdEncoding.EncodeToString([]byte(o.apiKey + ":" + o.token))
		dial = append(dial, grpc.WithPerRPCCredentials(basicAuth{header: "Basic " + raw}))
	}
	dial = append(dial, o.dialOptions...)
	target := address
	if addresses := splitAddresses(address); len(addresses) > 1 {
		// A resolver of its own for this client, with the whole list.
		r := manual.NewBuilderWithScheme(fmt.Sprintf("connstate-%d", resolverSeq.Add(1)))
		state := resolver.State{}
		for _, a := range addresses {
			state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
		}
		r.InitialState(state)
		// The target names the first address: it is the :authority (and
		// the TLS server name) of every call, whichever address serves it.
		target = r.Scheme() + ":///" + addresses[0]
		dial = append([]grpc.DialOption{grpc.WithResolvers(r)}, dial...)
	}
	dial = append([]grpc.DialOption{grpc.WithDefaultServiceConfig(serviceConfig)}, dial...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, o, err
	}
	return conn, o, nil
}

var resolverSeq atomic.Uint64

// splitAddresses splits a comma-separated list of addresses.
func splitAddresses(address string) []string {
	var out []string
	for _, a := range strings.Split(address, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// serviceConfig: pick_first over the addresses, in their order, and the
// reads retried on UNAVAILABLE (so on the next address once the current one
// is gone). IngestEvents, DeleteConnectionState and UpdateSettings are not
// retried (not idempotent, or not safely so).
const serviceConfig = `{
  "loadBalancingConfig": [{"pick_first": {}}],
  "methodConfig": [{
    "name": [
      {"service": "connstate.v1.ConnectionStateService", "method": "GetConnectionState"},
      {"service": "connstate.v1.ConnectionStateService", "method": "ListConnectionStates"},
      {"service": "connstate.v1.ConnectionStateService", "method": "ListConnectionLogs"},
      {"service": "connstate.v1.AdminService", "method": "GetSettings"}
    ],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// NewClient wraps an existing gRPC connection.
func NewClient(conn *grpc.ClientConn) *Client {
	return &Client{
		conn:   conn,
		states: pb.NewConnectionStateServiceClient(conn),
		ingest: pb.NewIngestServiceClient(conn),
		admin:  pb.NewAdminServiceClient(conn),
	}
}

// Close closes the connection; running calls and watches end with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying gRPC connection (for example for the health service).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// StateService is the generated ConnectionStateService stub.
func (c *Client) StateService() pb.ConnectionStateServiceClient { return c.states }

// IngestService is the generated IngestService stub.
func (c *Client) IngestService() pb.IngestServiceClient { return c.ingest }

// AdminService is the generated AdminService stub.
func (c *Client) AdminService() pb.AdminServiceClient { return c.admin }

// Get returns the state record of one client; NOT_FOUND when the client was
// never seen connected or its record was deleted.
func (c *Client) Get(ctx context.Context, clientID string, opts ...grpc.CallOption) (*pb.ConnectionState, error) {
	return c.states.GetConnectionState(ctx, &pb.GetConnectionStateRequest{ClientId: clientID}, opts...)
}

// List yields every state record matching req (nil: all), following page
// tokens. req.PageSize sets the size of each page; req.PageToken, if set, is
// where it starts. The iteration stops at the first error, which is yielded.
func (c *Client) List(ctx context.Context, req *pb.ListConnectionStatesRequest, opts ...grpc.CallOption) iter.Seq2[*pb.ConnectionState, error] {
	return func(yield func(*pb.ConnectionState, error) bool) {
		r := &pb.ListConnectionStatesRequest{}
		if req != nil {
			r = proto.Clone(req).(*pb.ListConnectionStatesRequest)
		}
		for {
			page, err := c.states.ListConnectionStates(ctx, r, opts...)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, s := range page.GetStates() {
				if !yield(s, nil) {
					return
				}
			}
			if page.GetNextPageToken() == "" {
				return
			}
			r.PageToken = page.GetNextPageToken()
		}
	}
}

// Logs yields the connection log entries matching req (nil: of all
// clients), newest first, following page tokens.
func (c *Client) Logs(ctx context.Context, req *pb.ListConnectionLogsRequest, opts ...grpc.CallOption) iter.Seq2[*pb.LogEntry, error] {
	return func(yield func(*pb.LogEntry, error) bool) {
		r := &pb.ListConnectionLogsRequest{}
		if req != nil {
			r = proto.Clone(req).(*pb.ListConnectionLogsRequest)
		}
		for {
			page, err := c.states.ListConnectionLogs(ctx, r, opts...)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, e := range page.GetEntries() {
				if !yield(e, nil) {
					return
				}
			}
			if page.GetNextPageToken() == "" {
				return
			}
			r.PageToken = page.GetNextPageToken()
		}
	}
}

// ClientLogs is Logs for one client.
func (c *Client) ClientLogs(ctx context.Context, clientID string, opts ...grpc.CallOption) iter.Seq2[*pb.LogEntry, error] {
	return c.Logs(ctx, &pb.ListConnectionLogsRequest{ClientId: clientID}, opts...)
}

// Ingest records a batch of lifecycle events reported by broker. It returns
// once every connect, failed connect and disconnect is durable.
func (c *Client) Ingest(ctx context.Context, broker string, events []*pb.LifecycleEvent, opts ...grpc.CallOption) (*pb.IngestEventsResponse, error) {
	return c.ingest.IngestEvents(ctx, &pb.IngestEventsRequest{Broker: broker, Events: events}, opts...)
}

// Delete deletes the state record and connection log of one client and
// returns the revision of the deletion; NOT_FOUND when there is no record.
func (c *Client) Delete(ctx context.Context, clientID string, opts ...grpc.CallOption) (uint64, error) {
	resp, err := c.states.DeleteConnectionState(ctx, &pb.DeleteConnectionStateRequest{ClientId: clientID}, opts...)
	if err != nil {
		return 0, err
	}
	return resp.GetRevision(), nil
}

// Settings returns the administrator settings.
func (c *Client) Settings(ctx context.Context, opts ...grpc.CallOption) (*pb.Settings, error) {
	return c.admin.GetSettings(ctx, &pb.GetSettingsRequest{}, opts...)
}

// UpdateSettings changes the settings named in mask (every non-zero field of
// settings when mask is empty) and returns the new settings.
func (c *Client) UpdateSettings(ctx context.Context, settings *pb.Settings, mask []string, opts ...grpc.CallOption) (*pb.Settings, error) {
	return c.admin.UpdateSettings(ctx, &pb.UpdateSettingsRequest{Settings: settings, UpdateMask: mask}, opts...)
}

// CurrentRevision returns the newest committed revision of the store.
func (c *Client) CurrentRevision(ctx context.Context, opts ...grpc.CallOption) (uint64, error) {
	page, err := c.states.ListConnectionStates(ctx, &pb.ListConnectionStatesRequest{PageSize: 1}, opts...)
	if err != nil {
		return 0, err
	}
	return page.GetRevision(), nil
}

// IsNotFound reports whether err is a gRPC status error with code NOT_FOUND.
func IsNotFound(err error) bool { return status.Code(err) == codes.NotFound }

// IsInvalidArgument reports whether err is a gRPC status error with code
// INVALID_ARGUMENT (the message names the offending field).
func IsInvalidArgument(err error) bool { return status.Code(err) == codes.InvalidArgument }
