/** A FIFO mutex: callers run one at a time, in the order they asked. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve();
  #waiting = 0;

  run<T>(fn: () => Promise<T>): Promise<T> {
    this.#waiting++;
    const result = this.#tail.then(fn);
    this.#tail = result.then(
      () => {
        this.#waiting--;
      },
      () => {
        this.#waiting--;
      },
    );
    return result;
  }

  /** Someone holds or waits for the mutex. */
  get busy(): boolean {
    return this.#waiting > 0;
  }
}
