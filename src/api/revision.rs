//! Read your writes, on one node or across a cluster's nodes.
//!
//! Every answer of the gRPC and REST APIs carries `x-connstate-revision`:
//! the store's committed revision when the request was taken up, so the
//! answer reflects every change up to it (a cluster's nodes count the same
//! revisions). A request may carry `x-connstate-min-revision: R` (gRPC
//! metadata or an HTTP header, for example the revision a write answered
//! on another node): it waits until this node has applied revision `R`, at
//! most [`MAX_WAIT`] (or the gRPC deadline, if shorter), and fails with
//! DEADLINE_EXCEEDED / 504 when it has not.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::http::{self, HeaderValue, Request, Response};
use axum::{extract::State, response::IntoResponse};

use super::rest::error::ApiError;
use crate::{domain::Revision, store::Store};

pub const MIN_REVISION_HEADER: &str = "x-connstate-min-revision";
pub const REVISION_HEADER: &str = "x-connstate-revision";

/// The longest a request waits for its revision.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The revision a request asks for: `None` without the header, `Err` with
/// a reason when it is not a revision.
fn wanted(headers: &http::HeaderMap) -> Result<Option<Revision>, String> {
    let Some(value) = headers.get(MIN_REVISION_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<Revision>().ok())
        .map(Some)
        .ok_or_else(|| "must be a revision: a whole number from 0".to_owned())
}

/// Waits for `wanted` (if any), at most `limit`: the revision reached, or
/// the one reached when the wait ran out.
async fn reach(
    store: &Store,
    wanted: Option<Revision>,
    limit: Duration,
) -> Result<Revision, Revision> {
    let Some(wanted) = wanted else {
        return Ok(store.committed_revision());
    };
    let reached = store.wait_for_revision(wanted, limit).await;
    if reached >= wanted {
        Ok(reached)
    } else {
        Err(reached)
    }
}

fn set_revision(headers: &mut http::HeaderMap, revision: Revision) {
    headers.insert(REVISION_HEADER, HeaderValue::from(revision));
}

/// The REST middleware (see the module docs).
pub async fn rest(
    State(store): State<Store>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let wanted = match wanted(request.headers()) {
        Ok(w) => w,
        Err(reason) => return ApiError::bad("X-Connstate-Min-Revision", reason).into_response(),
    };
    let revision = match reach(&store, wanted, MAX_WAIT).await {
        Ok(r) => r,
        Err(reached) => {
            return ApiError::RevisionNotReached {
                wanted: wanted.unwrap_or_default(),
                reached,
            }
            .into_response();
        }
    };
    let mut response = next.run(request).await;
    set_revision(response.headers_mut(), revision);
    response
}

/// The gRPC layer (see the module docs).
#[derive(Clone)]
pub struct GrpcLayer {
    store: Store,
}

impl GrpcLayer {
    pub fn new(store: Store) -> GrpcLayer {
        GrpcLayer { store }
    }
}

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> GrpcService<S> {
        GrpcService {
            inner,
            store: self.store.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    store: Store,
}

/// The gRPC deadline a request carries (`grpc-timeout`), if any.
fn grpc_deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, R> tower::Service<Request<B>> for GrpcService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        Box::pin(async move {
            let wanted = match wanted(request.headers()) {
                Ok(w) => w,
                Err(reason) => {
                    return Ok(tonic::Status::invalid_argument(format!(
                        "{MIN_REVISION_HEADER}: {reason}"
                    ))
                    .into_http());
                }
            };
            // A tenth of the deadline is left for the answer to reach the
            // caller before its own timer ends the call.
            let limit =
                grpc_deadline(request.headers()).map_or(MAX_WAIT, |d| (d - d / 10).min(MAX_WAIT));
            let revision = match reach(&store, wanted, limit).await {
                Ok(r) => r,
                Err(reached) => {
                    return Ok(tonic::Status::deadline_exceeded(format!(
                        "this node has applied revision {reached}, and the request asked for at \
                         least {} ({MIN_REVISION_HEADER}); try again, or ask another node",
                        wanted.unwrap_or_default()
                    ))
                    .into_http());
                }
            };
            let mut response = inner.call(request).await?;
            set_revision(response.headers_mut(), revision);
            Ok(response)
        })
    }
}
