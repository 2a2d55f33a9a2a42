export {
  SluiceClient,
  Subscription,
  SUBPROTOCOL,
  type ClientEvents,
  type ClientOptions,
  type Closed,
  type ConnectionState,
  type Disconnect,
  type Presence,
  type PresenceChange,
  type PresenceMember,
  type RecoveryFailed,
  type RequestOptions,
  type Settled,
  type SluiceEvent,
  type StreamPosition,
  type SubscribeOptions,
  type Subscribed,
  type SubscriptionEvents,
  type WebSocketConstructor,
  type Welcome,
} from "./client.js";
export { ClientErrorCode, SluiceError } from "./errors.js";
export { browserLifecycle, type Lifecycle, type LifecycleEvent } from "./lifecycle.js";
export type { KeyValueStorage } from "./storage.js";
export {
  backoffDelay,
  checkUrl,
  closeDecision,
  DEFAULT_BACKOFF,
  NO_RETRY_CLOSE_CODES,
  NO_RETRY_HTTP_STATUSES,
  PLAINTEXT_HOSTS,
  type BackoffOptions,
  type CloseDecision,
} from "./policy.js";
