//! The one mapping from query errors to gRPC statuses. Internal causes are
//! logged here and never sent to the client.

use tonic::{Code, Status, metadata::MetadataValue};

use crate::query::{QueryError, WatchEnd};

/// Trailer naming the oldest revision a watch can still replay from.
pub const OLDEST_REVISION_TRAILER: &str = "x-connstate-oldest-revision";
/// Trailer naming the last revision a watch delivered.
pub const LAST_REVISION_TRAILER: &str = "x-connstate-last-revision";

fn with_trailer(mut status: Status, key: &'static str, value: u64) -> Status {
    if let Ok(value) = MetadataValue::try_from(value.to_string()) {
        status.metadata_mut().insert(key, value);
    }
    status
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Status {
        match e {
            QueryError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            QueryError::NotFound(_) => Status::not_found(e.to_string()),
            QueryError::Disabled => Status::failed_precondition(
                "client connection state is disabled; enable it with UpdateSettings",
            ),
            QueryError::OutOfRange { oldest, .. } => with_trailer(
                Status::out_of_range(e.to_string()),
                OLDEST_REVISION_TRAILER,
                oldest,
            ),
            QueryError::AheadOfStore { .. } => Status::out_of_range(e.to_string()),
            QueryError::ShuttingDown | QueryError::CannotRecord(_) => {
                Status::unavailable(e.to_string())
            }
            QueryError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                Status::internal("internal error")
            }
        }
    }
}

impl From<WatchEnd> for Status {
    fn from(end: WatchEnd) -> Status {
        match end {
            WatchEnd::Lagged { last_delivered } => with_trailer(
                Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "the watcher fell too far behind the live feed; resume with start_revision {last_delivered}"
                    ),
                ),
                LAST_REVISION_TRAILER,
                last_delivered,
            ),
            WatchEnd::OutOfRange { requested, oldest } => {
                Status::from(QueryError::OutOfRange { requested, oldest })
            }
            WatchEnd::ShuttingDown { last_delivered } => with_trailer(
                Status::unavailable(format!(
                    "the server is shutting down; resume with start_revision {last_delivered}"
                )),
                LAST_REVISION_TRAILER,
                last_delivered,
            ),
            WatchEnd::Failed { last_delivered } => with_trailer(
                Status::internal("internal error"),
                LAST_REVISION_TRAILER,
                last_delivered,
            ),
        }
    }
}
