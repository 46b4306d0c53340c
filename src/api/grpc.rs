//! The gRPC services: thin adapters from protobuf requests to the query
//! service and back. Validation happens in [`super::convert`]; errors map to
//! statuses in [`super::error`].

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    auth::{Gate, Refusal, require},
    convert,
};
use crate::registry::{Principal, Role};
use crate::{
    pb::{
        self, admin_service_server::AdminService,
        connection_state_service_server::ConnectionStateService,
        ingest_service_server::IngestService,
    },
    query::QueryService,
};

/// Implements the three gRPC services over one query service.
#[derive(Clone)]
pub struct GrpcApi {
    query: QueryService,
}

impl GrpcApi {
    pub fn new(query: QueryService) -> Self {
        GrpcApi { query }
    }

    pub(super) fn query(&self) -> &QueryService {
        &self.query
    }
}

/// Authenticates every call and leaves the caller in the request's
/// extensions for the handlers' role checks.
pub fn interceptor(gate: Gate) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let principal = gate.authenticate(header).map_err(Status::from)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        match refusal {
            Refusal::Unauthenticated => Status::unauthenticated(
                "an API key and token are required (metadata authorization: Basic base64(key:token))",
            ),
            Refusal::InvalidCredentials => {
                Status::unauthenticated("invalid credentials: the API key or its token is wrong")
            }
            Refusal::Forbidden { needed, has } => Status::permission_denied(format!(
                "this call needs the {needed} role; the API key has {has}"
            )),
        }
    }
}

/// Checks the caller the interceptor authenticated.
pub(super) fn allow<T>(request: &Request<T>, needed: Role) -> Result<(), Status> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .ok_or(Refusal::Unauthenticated)?;
    Ok(require(principal, needed)?)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchConnectionsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConnectionStateService for GrpcApi {
    #[tracing::instrument(skip_all, fields(client_id = %request.get_ref().client_id))]
    async fn get_connection_state(
        &self,
        request: Request<pb::GetConnectionStateRequest>,
    ) -> Result<Response<pb::ConnectionState>, Status> {
        allow(&request, Role::ReadOnly)?;
        let client = convert::parse_client_id("client_id", &request.get_ref().client_id)?;
        let state = self.query.get_state(&client)?;
        Ok(Response::new(pb::ConnectionState::from(&state)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_connection_states(
        &self,
        request: Request<pb::ListConnectionStatesRequest>,
    ) -> Result<Response<pb::ListConnectionStatesResponse>, Status> {
        allow(&request, Role::ReadOnly)?;
        let list = convert::parse_list_states(request.get_ref())?;
        let page = self.query.list_states(list).await?;
        Ok(Response::new(pb::ListConnectionStatesResponse {
            states: page.states.iter().map(pb::ConnectionState::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            revision: page.revision,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_connection_logs(
        &self,
        request: Request<pb::ListConnectionLogsRequest>,
    ) -> Result<Response<pb::ListConnectionLogsResponse>, Status> {
        allow(&request, Role::ReadOnly)?;
        let r = request.get_ref();
        let client = convert::parse_log_client(r, |t, d| self.query.device_client_id(t, d))?;
        let list = convert::parse_list_logs(r, client)?;
        let page = self.query.list_logs(list).await?;
        Ok(Response::new(pb::ListConnectionLogsResponse {
            entries: page.entries.iter().map(pb::LogEntry::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            revision: page.revision,
        }))
    }

    type WatchConnectionsStream = WatchStream;

    /// The generated server's form, encoding every message per stream and
    /// one change per message; the server mounts the watch module's
    /// routes instead, which send the same bytes, each change encoded once.
    #[tracing::instrument(skip_all)]
    async fn watch_connections(
        &self,
        request: Request<pb::WatchConnectionsRequest>,
    ) -> Result<Response<Self::WatchConnectionsStream>, Status> {
        allow(&request, Role::ReadOnly)?;
        // One change per message here: `changes` needs the shared bytes.
        convert::parse_max_changes_per_message(request.get_ref())?;
        let watch = convert::parse_watch(request.get_ref())?;
        let items = self.query.watch(watch)?;
        let stream = ReceiverStream::new(items).map(|item| match item {
            Ok(item) => Ok(convert::watch_item(item)),
            Err(end) => Err(Status::from(end)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(client_id = %request.get_ref().client_id))]
    async fn delete_connection_state(
        &self,
        request: Request<pb::DeleteConnectionStateRequest>,
    ) -> Result<Response<pb::DeleteConnectionStateResponse>, Status> {
        allow(&request, Role::Operator)?;
        let client = convert::parse_client_id("client_id", &request.get_ref().client_id)?;
        let revision = self.query.delete_state(client).await?;
        Ok(Response::new(pb::DeleteConnectionStateResponse {
            revision,
        }))
    }
}

#[tonic::async_trait]
impl IngestService for GrpcApi {
    #[tracing::instrument(skip_all, fields(broker = %request.get_ref().broker, events = request.get_ref().events.len()))]
    async fn ingest_events(
        &self,
        request: Request<pb::IngestEventsRequest>,
    ) -> Result<Response<pb::IngestEventsResponse>, Status> {
        allow(&request, Role::Operator)?;
        let events = convert::parse_ingest(request.get_ref())?;
        let lease =
            convert::parse_lease("lease_duration", request.get_ref().lease_duration.as_ref())?;
        let accepted = events.len() as u32;
        let revision = self.query.ingest(events, lease).await?;
        Ok(Response::new(pb::IngestEventsResponse {
            accepted,
            revision,
        }))
    }

    #[tracing::instrument(skip_all, fields(broker = %request.get_ref().broker))]
    async fn renew_broker_lease(
        &self,
        request: Request<pb::RenewBrokerLeaseRequest>,
    ) -> Result<Response<pb::BrokerLease>, Status> {
        allow(&request, Role::Operator)?;
        let r = request.get_ref();
        let broker = convert::parse_broker(&r.broker)?;
        let Some(duration) = convert::parse_lease("lease_duration", r.lease_duration.as_ref())?
        else {
            return Err(Status::invalid_argument(
                "lease_duration: required (1 s to 1 day)",
            ));
        };
        let lease = self.query.renew_lease(broker, duration).await?;
        Ok(Response::new(pb::BrokerLease::from(&lease)))
    }
}

#[tonic::async_trait]
impl AdminService for GrpcApi {
    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        allow(&request, Role::ReadOnly)?;
        Ok(Response::new(pb::Settings::from(&self.query.settings())))
    }

    #[tracing::instrument(skip_all)]
    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        allow(&request, Role::Admin)?;
        let settings = convert::parse_settings_update(request.get_ref(), &self.query.settings())?;
        let settings = self.query.update_settings(settings).await?;
        Ok(Response::new(pb::Settings::from(&settings)))
    }
}
