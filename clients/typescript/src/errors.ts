/**
 * A refused or failed request.
 *
 * `code` is one of the server's error codes (`forbidden`, `schema_invalid`,
 * `rate_limited`, ..., or a handler's own code such as `empty_text`), or one
 * of the client's own codes in {@link ClientErrorCode}.
 */
export class SluiceError extends Error {
  /** The error code. */
  readonly code: string;
  /** For `rate_limited`, `unavailable` and `too_many_keys`: when to try again, in ms. */
  readonly retryAfterMs: number | undefined;
  /** The request's idempotency key: request again with it to learn what became of it. */
  readonly key: string | undefined;

  constructor(code: string, message: string, retryAfterMs?: number, key?: string) {
    super(message);
    this.name = "SluiceError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.key = key;
  }
}

/** Codes the client itself gives (the server never sends these). */
export const ClientErrorCode = {
  /** No answer within the request's timeout (queued time included). */
  timeout: "timeout",
  /**
   * Sent, then the connection dropped before the answer, and it could not
   * be resent safely (the server takes no keys, or its window passed): it
   * may or may not have been applied.
   */
  connectionLost: "connection_lost",
  /** Made while disconnected with a full queue (or with `maxQueue: 0`). */
  queueFull: "queue_full",
  /** The client was closed by the app or stopped for good (see the `closed` event). */
  closed: "closed",
  /** An async iterator's consumer fell more than its buffer behind. */
  overflow: "overflow",
} as const;
