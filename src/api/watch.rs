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
use tokio_stream::Stream;
use tonic::{
    Request, Response, Status,
    body::Body as TonicBody,
    codec::{Codec, EncodeBuf, Encoder},
    codegen::{Body, BoxFuture, Service, StdError, http},
    server::{NamedService, ServerStreamingService},
};

use super::{
    convert,
    grpc::{self, GrpcApi},
};
use crate::{
    domain::Change,
    metrics::{FormatLabel, Metrics},
    pb::{self, connection_state_service_server::ConnectionStateServiceServer},
    query::{WatchEnd, WatchItem},
    registry::Role,
};

/// The method [`ConnectionStateRoutes`] serves itself.
pub const WATCH_PATH: &str = "/connstate.v1.ConnectionStateService/WatchConnections";

/// A watch stream of encoded `WatchConnectionsResponse` messages.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl GrpcApi {
    /// WatchConnections as the server sends it: each change encoded once
    /// and shared by every stream that sends it (see the module docs).
    #[tracing::instrument(skip_all)]
    pub async fn watch_frames(
        &self,
        request: Request<pb::WatchConnectionsRequest>,
    ) -> Result<Response<FrameStream>, Status> {
        grpc::allow(&request, Role::ReadOnly)?;
        let batch = convert::parse_max_changes_per_message(request.get_ref())?;
        let request = convert::parse_watch(request.get_ref())?;
        let items = self.query().watch(request)?;
        let encoded = protobuf_encodings(self.query().metrics());
        Ok(Response::new(frames(items, batch, encoded)))
    }
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

/// The encoded messages of a watcher's items, with up to `batch` changes
/// that are ready together in one `changes` message (1: one `change` per
/// message); the watcher's end becomes the status that closes the stream.
pub fn frames(
    items: mpsc::Receiver<Result<WatchItem, WatchEnd>>,
    batch: usize,
    encoded: Counter,
) -> FrameStream {
    Box::pin(Frames {
        items,
        held: None,
        batch: batch.max(1),
        encoded,
    })
}

struct Frames {
    items: mpsc::Receiver<Result<WatchItem, WatchEnd>>,
    /// An item taken while filling a batch that does not belong in it.
    held: Option<Result<WatchItem, WatchEnd>>,
    batch: usize,
    encoded: Counter,
}

impl Stream for Frames {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match this.held.take() {
            Some(item) => item,
            None => match this.items.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        let change = match item {
            Ok(WatchItem::Change(change)) => change,
            // Snapshots, heartbeats and their ends belong to one stream.
            Ok(item) => {
                return Poll::Ready(Some(Ok(convert::watch_item(item).encode_to_vec().into())));
            }
            Err(end) => return Poll::Ready(Some(Err(Status::from(end)))),
        };
        let first = change_frame(&change, &this.encoded);
        if this.batch == 1 {
            return Poll::Ready(Some(Ok(first)));
        }
        // Only what is ready now: a message is never held back to fill it.
        let mut ready = vec![first];
        while ready.len() < this.batch {
            match this.items.try_recv() {
                Ok(Ok(WatchItem::Change(change))) => {
                    ready.push(change_frame(&change, &this.encoded));
                }
                Ok(other) => {
                    this.held = Some(other);
                    break;
                }
                // Empty, or closed: the next poll sees the end.
                Err(_) => break,
            }
        }
        Poll::Ready(Some(Ok(match ready.len() {
            1 => ready.swap_remove(0),
            _ => batch_frame(&ready),
        })))
    }
}

/// The response carrying the changes of several `change` responses as one
/// `changes`, from their encoded bytes: a `change` response is field 1
/// holding the change, and so is each change in a `ChangeBatch`, so the
/// batch's body is the responses one after the other.
fn batch_frame(responses: &[Bytes]) -> Bytes {
    const CHANGES_FIELD: u32 = 4;
    let body: usize = responses.iter().map(Bytes::len).sum();
    let mut out = bytes::BytesMut::with_capacity(body + 16);
    prost::encoding::encode_key(
        CHANGES_FIELD,
        prost::encoding::WireType::LengthDelimited,
        &mut out,
    );
    prost::encoding::encode_varint(body as u64, &mut out);
    for response in responses {
        out.put_slice(response);
    }
    out.freeze()
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
        let expected = convert::watch_item(WatchItem::Change(change.clone())).encode_to_vec();
        let mut streams = Vec::new();
        for _ in 0..100 {
            let (tx, rx) = mpsc::channel(4);
            let mut frames = frames(rx, 1, encoded.clone());
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

    #[tokio::test]
    async fn changes_ready_together_share_a_message_up_to_the_limit() {
        let encoded = Counter::default();
        let changes: Vec<_> = (1..=4).map(deletion).collect();
        let heartbeat = WatchItem::Heartbeat {
            revision: 3,
            time: Utc::now(),
        };
        let (tx, rx) = mpsc::channel(8);
        for item in [
            WatchItem::Change(changes[0].clone()),
            WatchItem::Change(changes[1].clone()),
            WatchItem::Change(changes[2].clone()),
            heartbeat.clone(),
            WatchItem::Change(changes[3].clone()),
        ] {
            tx.send(Ok(item)).await.unwrap();
        }
        tx.send(Err(WatchEnd::ShuttingDown { last_delivered: 4 }))
            .await
            .unwrap();
        drop(tx);
        let sent: Vec<_> = tokio_stream::StreamExt::collect(frames(rx, 2, encoded.clone())).await;
        assert_eq!(sent.len(), 5, "{sent:?}");
        let batch = pb::WatchConnectionsResponse {
            event: Some(pb::watch_connections_response::Event::Changes(
                pb::ChangeBatch {
                    changes: changes[..2]
                        .iter()
                        .map(|c| pb::Change::from(c.as_ref()))
                        .collect(),
                },
            )),
        };
        let single = |item| Some(Bytes::from(convert::watch_item(item).encode_to_vec()));
        assert_eq!(
            sent[0].as_ref().ok(),
            Some(&Bytes::from(batch.encode_to_vec())),
            "the first two in one message, as prost encodes it"
        );
        assert_eq!(
            sent[1].as_ref().ok(),
            single(WatchItem::Change(changes[2].clone())).as_ref()
        );
        assert_eq!(sent[2].as_ref().ok(), single(heartbeat).as_ref());
        assert_eq!(
            sent[3].as_ref().ok(),
            single(WatchItem::Change(changes[3].clone())).as_ref()
        );
        assert_eq!(
            sent[4].as_ref().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert_eq!(encoded.get(), 4);
    }
}
