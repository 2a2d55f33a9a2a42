import { ClientErrorCode, SluiceError } from "./errors.js";

/**
 * A bounded async iterator fed by pushes. A consumer that falls more than
 * `max` items behind gets an `overflow` error instead of unbounded memory.
 */
export class EventStream<T> implements AsyncIterableIterator<T> {
  private _buffer: T[] = [];
  private _waiting: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }> = [];
  private _done = false;
  private _failure: unknown = undefined;

  constructor(
    private readonly _max: number,
    private readonly _onDone: (stream: EventStream<T>) => void,
  ) {}

  /** @internal Deliver an item (ignored after the end). */
  _push(item: T): void {
    if (this._done) return;
    const w = this._waiting.shift();
    if (w) {
      w.resolve({ value: item, done: false });
      return;
    }
    if (this._buffer.length >= this._max) {
      this._end(new SluiceError(ClientErrorCode.overflow, `the iterator's consumer fell more than ${this._max} events behind`));
      return;
    }
    this._buffer.push(item);
  }

  /** @internal End the stream, with an error for the consumer or cleanly. */
  _end(error?: unknown): void {
    if (this._done) return;
    this._done = true;
    this._failure = error;
    this._onDone(this);
    for (const w of this._waiting.splice(0)) {
      if (error !== undefined && this._buffer.length === 0) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this._buffer.length > 0) {
      return Promise.resolve({ value: this._buffer.shift() as T, done: false });
    }
    if (this._done) {
      if (this._failure !== undefined) {
        const e = this._failure;
        this._failure = undefined;
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this._waiting.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    this._buffer = [];
    this._end();
    this._failure = undefined;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** A minimal typed event emitter. */
export class Emitter<E extends Record<string, unknown>> {
  private _listeners: { [K in keyof E]?: Set<(value: E[K]) => void> } = {};

  /** Listen to `name`; returns a function that stops listening. */
  on<K extends keyof E>(name: K, fn: (value: E[K]) => void): () => void {
    const set = (this._listeners[name] ??= new Set());
    set.add(fn);
    return () => set.delete(fn);
  }

  protected emit<K extends keyof E>(name: K, value: E[K]): void {
    const set = this._listeners[name];
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (e) {
        // A listener's exception must not break the connection's state.
        // Report it where the platform reports uncaught errors.
        const g = globalThis as unknown as { setTimeout(f: () => void, ms: number): unknown };
        g.setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}
