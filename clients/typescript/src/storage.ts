/**
 * Where the offline queue is kept: anything with `getItem`, `setItem` and
 * `removeItem`, synchronous or returning promises. The browser's
 * `localStorage` and React Native's `AsyncStorage` fit as they are.
 */
export interface KeyValueStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}
