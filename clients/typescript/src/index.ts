export {
  ConnstateClient,
  toDate,
  type ConnstateClientOptions,
  type Credentials,
  type TlsOptions,
  type RawClients,
  type ListRequest,
  type LogsRequest,
  type LifecycleEventInit,
  type SettingsInit,
} from "./client.js";
export {
  ConnectionWatch,
  LAST_REVISION_TRAILER,
  OLDEST_REVISION_TRAILER,
  type FilterInit,
  type WatchBackoff,
  type WatchEvent,
  type WatchOptions,
} from "./watch.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { timestampFromDate, timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
export * from "./gen/connstate/v1/connstate_pb.js";
