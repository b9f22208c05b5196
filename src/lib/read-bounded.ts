/**
 * Reads an HTTP body as text, up to `limit` bytes; a larger body is cut off and read as ''.
 * With a `deadline` (epoch ms), a body still arriving past it is cut off with an error: the
 * client's idle timeout bounds each gap between chunks, this bounds the whole.
 *
 * Read with 'data' events rather than an async iterator: it runs for every call into a
 * participant, and the iterator's machinery cost more than the read.
 */

/** The part of a readable stream (undici's response body) this reads. */
export interface ReadableBody {
  on(event: 'data', listener: (chunk: Buffer | Uint8Array) => void): unknown;
  on(event: 'end' | 'close', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  off(event: 'data', listener: (chunk: Buffer | Uint8Array) => void): unknown;
  off(event: 'end' | 'close', listener: () => void): unknown;
  off(event: 'error', listener: (err: Error) => void): unknown;
  destroy(): unknown;
}

export function readBounded(body: ReadableBody, limit: number, deadline?: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = (): void => {
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('close', onClose);
      body.off('error', onError);
    };
    /** Stops reading a body that is still arriving: the error its destruction emits is expected (unheard, it would end the process). */
    const cutOff = (): void => {
      stop();
      body.on('error', ignore);
      body.destroy();
    };
    const onData = (chunk: Buffer | Uint8Array): void => {
      size += chunk.length;
      if (size > limit) {
        cutOff();
        resolve('');
        return;
      }
      if (deadline !== undefined && Date.now() > deadline) {
        cutOff();
        reject(new Error('the answer took longer than the request deadline'));
        return;
      }
      chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
    };
    const onEnd = (): void => {
      stop();
      resolve(chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8'));
    };
    const onError = (err: Error): void => {
      stop();
      reject(err);
    };
    // Closed without an end or an error (destroyed elsewhere): the answer is incomplete.
    const onClose = (): void => {
      stop();
      reject(new Error('the answer ended before it was complete'));
    };
    body.on('data', onData);
    body.on('end', onEnd);
    body.on('close', onClose);
    body.on('error', onError);
  });
}

const ignore = (): void => undefined;
