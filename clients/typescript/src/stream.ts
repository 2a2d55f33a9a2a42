import { ClientErrorCode, SluiceError } from "./errors.js";

/**
 * A bounded async iterator fed by pushes. A consumer that falls more than
 * `max` items behind gets an `overflow` error instead of unbounded memory.
 */
export class EventStream<T> implements AsyncIterableIterator<T> {
  private buffer: T[] = [];
  private waiting: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }> = [];
  private done = false;
  private failure: unknown = undefined;

  constructor(
    private readonly max: number,
    private readonly onDone: (stream: EventStream<T>) => void,
  ) {}

  /** Deliver an item (ignored after the end). */
  push(item: T): void {
    if (this.done) return;
    const w = this.waiting.shift();
    if (w) {
      w.resolve({ value: item, done: false });
      return;
    }
    if (this.buffer.length >= this.max) {
      this.end(new SluiceError(ClientErrorCode.overflow, `the iterator's consumer fell more than ${this.max} events behind`));
      return;
    }
    this.buffer.push(item);
  }

  /** End the stream, with an error for the consumer or cleanly. */
  end(error?: unknown): void {
    if (this.done) return;
    this.done = true;
    this.failure = error;
    this.onDone(this);
    for (const w of this.waiting.splice(0)) {
      if (error !== undefined && this.buffer.length === 0) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.buffer.length > 0) {
      return Promise.resolve({ value: this.buffer.shift() as T, done: false });
    }
    if (this.done) {
      if (this.failure !== undefined) {
        const e = this.failure;
        this.failure = undefined;
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    this.buffer = [];
    this.end();
    this.failure = undefined;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** A minimal typed event emitter. */
export class Emitter<E extends Record<string, unknown>> {
  private listeners: { [K in keyof E]?: Set<(value: E[K]) => void> } = {};

  /** Listen to `name`; returns a function that stops listening. */
  on<K extends keyof E>(name: K, fn: (value: E[K]) => void): () => void {
    const set = (this.listeners[name] ??= new Set());
    set.add(fn);
    return () => set.delete(fn);
  }

  protected emit<K extends keyof E>(name: K, value: E[K]): void {
    const set = this.listeners[name];
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
