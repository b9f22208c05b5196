/**
 * Forwarding a request about a transaction this instance neither runs nor
 * knows to the instances that might: each live lease holder in turn, with the
 * client's own Authorization header (instances share their tokens) and a
 * marker so that a forwarded request is never forwarded again. Every hop is
 * bounded; the first answer that is not "unknown transaction" is the answer.
 * undici is loaded on the first hop: a lone instance never needs it.
 */

import type { Agent, request as undiciRequest } from 'undici';

export interface Peer {
  readonly holder: string;
  readonly publicUrl: string;
}

export interface ForwardedRequest {
  readonly method: string;
  /** Path and query, e.g. /v1/transactions/<id>/commit. */
  readonly url: string;
  readonly authorization?: string;
  /** JSON text, when the request had a body. */
  readonly body?: string;
}

/** The answer of the instance that knows the transaction, or who could not be asked. */
export interface ForwardResult {
  readonly answer?: ForwardedAnswer;
  /** Instances that did not answer in time or could not be reached: "nobody knows it" is then not sure. */
  readonly unreachable: readonly string[];
  /** Who holds which id could not be read again: "nobody knows it" is not sure either. */
  readonly unsure?: boolean;
}

export interface ForwardedAnswer {
  readonly status: number;
  readonly retryAfter?: string;
  readonly body: unknown;
  readonly by: string;
}

/** Set on a forwarded request: the instance that forwarded it. */
export const FORWARDED_BY = 'x-tcx-forwarded-by';

export class Forwarder {
  readonly #me: string;
  readonly #deadlines: { readonly readMs: number; readonly changeMs: number };
  #client: Promise<{ agent: Agent; request: typeof undiciRequest }> | undefined;
  #closed = false;

  /** `readMs`: a hop's deadline for a read; `changeMs`: for a state change (it may wait for votes and acknowledgements). */
  constructor(me: string, deadlines: { readMs: number; changeMs: number }) {
    this.#me = me;
    this.#deadlines = deadlines;
  }

  #undici(): Promise<{ agent: Agent; request: typeof undiciRequest }> {
    this.#client ??= import('undici').then(
      ({ Agent, request }) => {
        const longest = Math.max(this.#deadlines.readMs, this.#deadlines.changeMs);
        return { agent: new Agent({ connectTimeout: this.#deadlines.readMs, headersTimeout: longest, bodyTimeout: longest, connections: 16 }), request };
      },
      (err: unknown) => {
        this.#client = undefined; // tried again on the next hop
        throw err;
      },
    );
    return this.#client;
  }

  /** The first peer's answer that knows the transaction; none when no peer does (or could be asked). */
  async forward(peers: readonly Peer[], req: ForwardedRequest): Promise<ForwardResult> {
    const timeoutMs = req.method === 'GET' ? this.#deadlines.readMs : this.#deadlines.changeMs;
    const unreachable: string[] = [];
    for (const peer of this.#others(peers)) {
      try {
        const answer = await this.#send(peer, req, timeoutMs);
        const code = (answer.body as { error?: { code?: string } } | undefined)?.error?.code;
        if (answer.status === 404 && code === 'UNKNOWN_TRANSACTION') continue;
        return { answer, unreachable };
      } catch {
        unreachable.push(peer.holder); // its lease will lapse, and its adopter will answer
      }
    }
    return { unreachable };
  }

  /** Asks every peer the same GET (a list); the answers of those that answered 200, and who did not. */
  async askAll(peers: readonly Peer[], req: ForwardedRequest): Promise<{ answers: unknown[]; unreachable: string[] }> {
    const answers: unknown[] = [];
    const unreachable: string[] = [];
    await Promise.all(
      this.#others(peers).map(async (peer) => {
        try {
          const answer = await this.#send(peer, req, this.#deadlines.readMs);
          if (answer.status !== 200) throw new Error(`status ${answer.status}`);
          answers.push(answer.body);
        } catch {
          unreachable.push(peer.holder);
        }
      }),
    );
    return { answers, unreachable };
  }

  #others(peers: readonly Peer[]): Peer[] {
    return peers.filter((p) => p.holder !== this.#me);
  }

  /** One hop: the request as the client made it, marked as forwarded, with the client's token. */
  async #send(peer: Peer, req: ForwardedRequest, timeoutMs: number): Promise<ForwardedAnswer> {
    if (this.#closed) throw new Error('the forwarder is closed');
    const { agent, request } = await this.#undici();
    const res = await request(`${peer.publicUrl}${req.url}`, {
      dispatcher: agent,
      method: req.method as 'GET' | 'POST' | 'DELETE',
      headers: {
        [FORWARDED_BY]: this.#me,
        ...(req.authorization === undefined ? {} : { authorization: req.authorization }),
        ...(req.body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(req.body === undefined ? {} : { body: req.body }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.body.text();
    const retryAfter = res.headers['retry-after'];
    return {
      status: res.statusCode,
      body: text === '' ? undefined : (JSON.parse(text) as unknown),
      by: peer.holder,
      ...(typeof retryAfter === 'string' ? { retryAfter } : {}),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    const client = await this.#client?.catch(() => undefined);
    await client?.agent.close();
  }
}
