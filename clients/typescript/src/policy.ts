/** Reconnect delays and which closes end the client for good. */

/** Exponential backoff with full jitter. */
export interface BackoffOptions {
  /** The ceiling of the first delay, ms (default 500). */
  initialDelayMs: number;
  /** The cap on any delay's ceiling, ms (default 30000). */
  maxDelayMs: number;
  /** How much the ceiling grows per failed attempt (default 2). */
  factor: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  factor: 2,
};

/**
 * The delay before reconnect attempt `attempt` (0 for the first after a
 * drop): uniform in [0, min(maxDelayMs, initialDelayMs * factor^attempt)).
 * `random` returns a number in [0, 1).
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number,
): number {
  const ceiling = Math.min(
    options.maxDelayMs,
    options.initialDelayMs * Math.pow(options.factor, attempt),
  );
  return Math.floor(random() * ceiling);
}

/** What to do after a connection ended. */
export type CloseDecision =
  | { retry: true; freshToken: boolean; immediate: boolean }
  | { retry: false; why: string };

/**
 * Close codes after which the client does not reconnect (its `closed`
 * event says why). Everything else is retried with backoff.
 */
export const NO_RETRY_CLOSE_CODES: Readonly<Record<number, string>> = {
  1000: "closed by the server's handler",
  1002: "WebSocket protocol violation",
  1003: "the server refused the data",
  1007: "a text frame that is not UTF-8",
};

/** HTTP statuses of a refused handshake after which the client stops. */
export const NO_RETRY_HTTP_STATUSES: Readonly<Record<number, string>> = {
  403: "origin refused (403): the page's origin is not in the tenant's list",
  404: "unknown tenant or path (404)",
};

/**
 * Decide on a close with `code` and `reason`. `httpStatus` is the status
 * of a refused handshake where the WebSocket implementation exposes it
 * (Node's `ws` does, browsers do not); `previous401` whether the attempt
 * before also got a 401 with a token fresh from `getToken()`.
 */
export function closeDecision(
  code: number,
  reason: string,
  httpStatus: number | undefined,
  previous401: boolean,
): CloseDecision {
  if (httpStatus !== undefined) {
    if (httpStatus === 401) {
      return previous401
        ? { retry: false, why: "token refused (401) twice in a row: getToken() returns tokens the server does not accept" }
        : { retry: true, freshToken: true, immediate: true };
    }
    const stop = NO_RETRY_HTTP_STATUSES[httpStatus];
    if (stop !== undefined) return { retry: false, why: stop };
    return { retry: true, freshToken: false, immediate: false };
  }
  if (code === 1008 && reason === "token expired") {
    return { retry: true, freshToken: true, immediate: true };
  }
  if (code === 1000 && reason === "idle timeout") {
    return { retry: true, freshToken: false, immediate: false };
  }
  if (code >= 4000 && code <= 4999) {
    return { retry: false, why: `closed by the server's handler with its own code ${code}${reason ? ` (${reason})` : ""}` };
  }
  const stop = NO_RETRY_CLOSE_CODES[code];
  if (stop !== undefined) {
    return { retry: false, why: `${stop} (${code}${reason ? ` ${reason}` : ""})` };
  }
  return { retry: true, freshToken: false, immediate: false };
}

/** The hosts a `ws://` (plaintext) URL may name: this machine only. */
export const PLAINTEXT_HOSTS: readonly string[] = ["localhost", "127.0.0.1", "[::1]"];

/**
 * Check a server URL before anything is sent: `wss://` anywhere, `ws://`
 * only to this machine ({@link PLAINTEXT_HOSTS}). Over `ws://` the token
 * and every message cross the network readable and changeable by anyone
 * on the path (public Wi-Fi, a carrier, a proxy). Throws a `TypeError`
 * that says why.
 */
export function checkUrl(url: string): void {
  const m = /^(wss?):\/\/([^/?#]*)/i.exec(url);
  if (!m) throw new TypeError(`${url}: the URL must start with wss:// (e.g. wss://host/ws/<tenant>)`);
  const scheme = m[1].toLowerCase();
  const authority = m[2];
  if (authority === "" || authority.includes("@")) {
    throw new TypeError(`${url}: expected wss://HOST[:PORT]/ws/<tenant>, without user info`);
  }
  if (scheme === "wss") return;
  const host = authority.startsWith("[") ? authority.slice(0, authority.indexOf("]") + 1) : authority.split(":")[0];
  if (PLAINTEXT_HOSTS.includes(host.toLowerCase())) return;
  throw new TypeError(
    `refusing ${scheme}://${authority}: ws:// is plaintext, so the token and every message would cross the network ` +
      `readable and changeable by anyone on the path; use wss:// (ws:// is allowed only for ${PLAINTEXT_HOSTS.join(", ")})`,
  );
}
