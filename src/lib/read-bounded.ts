/**
 * Reads an HTTP body as text, up to `limit` bytes; a larger body is cut off and read as ''.
 * With a `deadline` (epoch ms), a body still arriving past it is cut off with an error: the
 * client's idle timeout bounds each gap between chunks, this bounds the whole.
 */
export async function readBounded(
  body: AsyncIterable<Buffer | Uint8Array> & { destroy(): unknown },
  limit: number,
  deadline?: number,
): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > limit) {
      body.destroy();
      return '';
    }
    if (deadline !== undefined && Date.now() > deadline) {
      body.destroy();
      throw new Error('the answer took longer than the request deadline');
    }
    chunks.push(Buffer.from(chunk));
  }
  return chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8');
}
