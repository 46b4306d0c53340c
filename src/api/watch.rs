//! WatchConnections on the wire: each change encoded once, however many
//! streams send it.
//!
//! Every watcher of the live feed receives a commit's changes as the same
//! `Arc<Change>`. The first stream to send a change encodes its
//! `WatchConnectionsResponse` and keeps the bytes in the change's
//! [`WireForms`](crate::domain::WireForms); every other stream copies those
//! bytes into its frame. The generated server would encode each message
//! again per stream, so [`ConnectionStateRoutes`] serves this one method
//! itself, with [`WatchCodec`] writing messages that are already encoded,
//! and hands every other method to the generated server. The bytes on the
//! wire are exactly those the generated server sends for the same items.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{
    Status,
    body::Body as TonicBody,
    codec::{Codec, EncodeBuf, Encoder},
    codegen::{Body, BoxFuture, Service, StdError, http},
    server::{NamedService, ServerStreamingService},
};

use super::{convert, grpc::GrpcApi};
use crate::{
    domain::Change,
    metrics::{FormatLabel, Metrics},
    pb::{self, connection_state_service_server::ConnectionStateServiceServer},
    query::{WatchEnd, WatchItem},
};

/// The method [`ConnectionStateRoutes`] serves itself.
pub const WATCH_PATH: &str = "/connstate.v1.ConnectionStateService/WatchConnections";

/// A watch stream of encoded `WatchConnectionsResponse` messages.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// The response message of one watch item, as the generated server sends it.
pub fn watch_item(item: WatchItem) -> pb::WatchConnectionsResponse {
    use pb::watch_connections_response::Event;
    let event = match item {
        WatchItem::Change(change) => Event::Change(pb::Change::from(change.as_ref())),
        WatchItem::Snapshot(state) => Event::Change(pb::Change {
            revision: state.revision,
            kind: pb::ChangeKind::Snapshot as i32,
            client_id: state.client_id.to_string(),
            state: Some(pb::ConnectionState::from(state.as_ref())),
            log_entry: None,
            commit_time: None,
        }),
        WatchItem::SnapshotComplete(revision) => {
            Event::SnapshotComplete(pb::SnapshotComplete { revision })
        }
        WatchItem::Heartbeat { revision, time } => Event::Heartbeat(pb::Heartbeat {
            revision,
            time: Some(convert::timestamp(time)),
        }),
    };
    pb::WatchConnectionsResponse { event: Some(event) }
}

/// The encoded response carrying `change`: built by the first stream that
/// sends it (counted in `encoded`), shared by the rest.
pub fn change_frame(change: &Change, encoded: &Counter) -> Bytes {
    change
        .wire
        .protobuf
        .get_or_init(|| {
            encoded.inc();
            let event = pb::watch_connections_response::Event::Change(pb::Change::from(change));
            let response = pb::WatchConnectionsResponse { event: Some(event) };
            Bytes::from(response.encode_to_vec())
        })
        .clone()
}

/// The counter of changes encoded for gRPC watch streams.
pub fn protobuf_encodings(metrics: &Metrics) -> Counter {
    metrics
        .watch_changes_encoded
        .get_or_create(&FormatLabel { format: "protobuf" })
        .clone()
}

/// The encoded messages of a watcher's items; its end becomes the status
/// that closes the stream.
pub fn frames(items: mpsc::Receiver<Result<WatchItem, WatchEnd>>, encoded: Counter) -> FrameStream {
    Box::pin(ReceiverStream::new(items).map(move |item| match item {
        Ok(WatchItem::Change(change)) => Ok(change_frame(&change, &encoded)),
        // Snapshots, heartbeats and their ends belong to one stream.
        Ok(item) => Ok(Bytes::from(watch_item(item).encode_to_vec())),
        Err(end) => Err(Status::from(end)),
    }))
}

/// The codec of WatchConnections: decodes the request as prost does and
/// writes responses that are already encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

/// Writes an encoded message as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedWriter;

impl Encoder for EncodedWriter {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Codec for WatchCodec {
    type Encode = Bytes;
    type Decode = pb::WatchConnectionsRequest;
    type Encoder = EncodedWriter;
    type Decoder = tonic_prost::ProstDecoder<pb::WatchConnectionsRequest>;

    fn encoder(&mut self) -> EncodedWriter {
        EncodedWriter
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// The ConnectionStateService: WatchConnections served with [`WatchCodec`],
/// every other method by the generated server. Mount it behind the same
/// interceptor as the generated server.
#[derive(Clone)]
pub struct ConnectionStateRoutes {
    api: GrpcApi,
    generated: ConnectionStateServiceServer<GrpcApi>,
}

impl ConnectionStateRoutes {
    pub fn new(api: GrpcApi) -> Self {
        ConnectionStateRoutes {
            generated: ConnectionStateServiceServer::new(api.clone()),
            api,
        }
    }
}

impl NamedService for ConnectionStateRoutes {
    const NAME: &'static str = <ConnectionStateServiceServer<GrpcApi> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for ConnectionStateRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_PATH {
            return self.generated.call(request);
        }
        let method = WatchMethod(self.api.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WatchCodec);
            Ok(grpc.server_streaming(method, request).await)
        })
    }
}

/// WatchConnections as a server-streaming method of encoded messages.
struct WatchMethod(GrpcApi);

impl ServerStreamingService<pb::WatchConnectionsRequest> for WatchMethod {
    type Response = Bytes;
    type ResponseStream = FrameStream;
    type Future = BoxFuture<tonic::Response<FrameStream>, Status>;

    fn call(&mut self, request: tonic::Request<pb::WatchConnectionsRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.watch_frames(request).await })
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use chrono::Utc;
    use tokio_stream::StreamExt;

    use super::*;
    use crate::domain::{ChangeKind, ClientId, WireForms};

    fn deletion(revision: u64) -> Arc<Change> {
        Arc::new(Change {
            revision,
            kind: ChangeKind::Deleted,
            client_id: Some(ClientId::new("d:local:sensor:one").unwrap()),
            state: None,
            log_entry: None,
            commit_time: Utc::now(),
            wire: WireForms::default(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_is_encoded_once_however_many_streams_send_it() {
        let encoded = Counter::default();
        let change = deletion(7);
        let expected = watch_item(WatchItem::Change(change.clone())).encode_to_vec();
        let mut streams = Vec::new();
        for _ in 0..100 {
            let (tx, rx) = mpsc::channel(4);
            let mut frames = frames(rx, encoded.clone());
            let change = change.clone();
            streams.push(tokio::spawn(async move {
                tx.send(Ok(WatchItem::Change(change))).await.unwrap();
                drop(tx);
                let mut sent = Vec::new();
                while let Some(frame) = frames.next().await {
                    sent.push(frame.unwrap());
                }
                sent
            }));
        }
        for stream in streams {
            let sent = tokio::time::timeout(Duration::from_secs(10), stream)
                .await
                .expect("every stream ends within 10 s")
                .unwrap();
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0], expected, "the bytes the generated server sends");
        }
        assert_eq!(encoded.get(), 1, "encoded once for 100 streams");

        // A clone of the change (a replay reads its own) is encoded again.
        let replayed = Arc::new((*change).clone());
        assert_eq!(change_frame(&replayed, &encoded), expected);
        assert_eq!(encoded.get(), 2);
    }
}
