/**
 * The work of a nats branch: the messages it publishes on commit, checked before anything
 * is kept, and encoded the same way on every call.
 *
 *   messages  an array of 1..100 `{ subject, data, headers? }` (no other fields)
 *   subject   a publish subject: tokens separated by `.`, none empty, no wildcard (`*`, `>`),
 *             no whitespace or control characters, at most 255 bytes; not a system subject
 *             (`$JS.`, `$JSC.`, `$SYS.`, `$NRG.`, `_INBOX.`: the JetStream API, the system
 *             account and reply inboxes are not a transaction's to write)
 *   data      any JSON value, required (use null for an empty value): a string is published
 *             as its UTF-8 text, anything else (number, boolean, null, object, array) as its
 *             JSON text — so `"42"` publishes `42` and `42` publishes `42` too, while
 *             `{"a":1}` publishes `{"a":1}`
 *   headers   an object of header name -> string value; names are RFC 7230 tokens (sent as
 *             given, case kept), values have no CR/LF or other control characters (tab
 *             allowed) and no leading or trailing whitespace (NATS would trim it). Names
 *             starting with `Nats-` (any case) are refused: JetStream interprets them
 *             (`Nats-Msg-Id`, `Nats-Expected-*`, `Nats-Rollup`, …) and the adapter sets the
 *             message id itself.
 *
 * Size: each message (subject, headers, data, and the id header the adapter adds) fits the
 * server's max_payload (1 MiB unless the server says otherwise), and a branch's messages
 * together are at most MAX_BRANCH_BYTES.
 */

import { CoordinatorError } from '../errors.js';

export const MAX_MESSAGES = 100;
export const MAX_SUBJECT_BYTES = 255;
export const MAX_BRANCH_BYTES = 1024 * 1024;
/** NATS's default max_payload, used until a connection tells the server's own. */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
const MAX_HEADERS = 64;
const MAX_HEADER_NAME_BYTES = 256;
/** Room for the `Nats-Msg-Id: tcx:<coordinator>:<transaction>:<branch>:<index>` header the adapter adds. */
export const MSG_ID_HEADER_BYTES = 256;

/** A message as it is published. */
export interface NatsMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: readonly (readonly [string, string])[];
  /** Bytes the server counts against max_payload (data + header block), without the id header. */
  readonly size: number;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const BAD_SUBJECT_CHAR = /[\s\p{Cc}*>]/u;
/** A control character other than tab (CR and LF would end the header line). */
const hasBadValueChar = (value: string): boolean => /\p{Cc}/u.test(value.replaceAll('\t', ''));
const RESERVED_PREFIXES = ['$JS.', '$JSC.', '$SYS.', '$NRG.', '_INBOX.'];
const MESSAGE_FIELDS = new Set(['subject', 'data', 'headers']);

const invalid = (message: string): CoordinatorError => new CoordinatorError('VALIDATION_FAILED', message);
const encoder = new TextEncoder();

/** Why `subject` is not a valid publish subject, or undefined when it is. */
export function subjectProblem(subject: string): string | undefined {
  if (subject === '') return 'is empty';
  if (Buffer.byteLength(subject) > MAX_SUBJECT_BYTES) return `is longer than ${MAX_SUBJECT_BYTES} bytes`;
  if (BAD_SUBJECT_CHAR.test(subject)) return 'holds whitespace, a control character or a wildcard (* or >)';
  if (subject.split('.').some((token) => token === '')) return 'has an empty token (a leading, trailing or doubled ".")';
  const upper = subject.toUpperCase();
  const reserved = RESERVED_PREFIXES.find((p) => upper.startsWith(p));
  if (reserved !== undefined) return `is a system subject (${reserved}…)`;
  return undefined;
}

/**
 * Checks a branch's messages and encodes them. Throws VALIDATION_FAILED saying which message
 * and what was wrong. `maxPayload` is the server's limit per message.
 */
export function parseNatsMessages(work: unknown, maxPayload = DEFAULT_MAX_PAYLOAD): NatsMessage[] {
  if (!Array.isArray(work)) throw invalid('messages must be an array of {subject, data, headers?}');
  if (work.length === 0) throw invalid('messages must hold at least one message');
  if (work.length > MAX_MESSAGES) throw invalid(`messages holds ${work.length} messages; at most ${MAX_MESSAGES} per branch`);
  const out: NatsMessage[] = [];
  let total = 0;
  for (const [index, entry] of work.entries()) {
    const message = parseMessage(entry, `messages[${index}]`);
    const size = message.size + Buffer.byteLength(message.subject);
    if (message.size + MSG_ID_HEADER_BYTES > maxPayload) {
      throw invalid(`messages[${index}] is ${message.size} bytes with its headers; the server takes at most ${maxPayload - MSG_ID_HEADER_BYTES} (max_payload ${maxPayload})`);
    }
    total += size;
    if (total > MAX_BRANCH_BYTES) throw invalid(`the messages of a branch are larger than ${MAX_BRANCH_BYTES} bytes together`);
    out.push(message);
  }
  return out;
}

function parseMessage(entry: unknown, where: string): NatsMessage {
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw invalid(`${where} must be an object {subject, data, headers?}`);
  const fields = entry as Record<string, unknown>;
  for (const key of Object.keys(fields)) if (!MESSAGE_FIELDS.has(key)) throw invalid(`${where} has an unknown field ${JSON.stringify(key)}`);
  const { subject, data, headers } = fields;
  if (typeof subject !== 'string') throw invalid(`${where}.subject must be a string`);
  const problem = subjectProblem(subject);
  if (problem !== undefined) throw invalid(`${where}.subject ${JSON.stringify(subject.slice(0, 80))} ${problem}`);
  if (data === undefined) throw invalid(`${where}.data is required (any JSON value; null for none)`);
  const bytes = encodeData(data, where);
  const pairs = parseHeaders(headers, where);
  // The header block as sent: "NATS/1.0\r\n" + "name: value\r\n"… + "\r\n".
  const headerBytes = pairs.length === 0 ? 0 : 12 + pairs.reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v) + 4, 0);
  return { subject, data: bytes, headers: pairs, size: bytes.byteLength + headerBytes };
}

function encodeData(data: unknown, where: string): Uint8Array {
  if (typeof data === 'string') return encoder.encode(data);
  let text: string | undefined;
  try {
    text = JSON.stringify(data);
  } catch {
    text = undefined;
  }
  if (text === undefined) throw invalid(`${where}.data must be a JSON value`);
  return encoder.encode(text);
}

function parseHeaders(headers: unknown, where: string): [string, string][] {
  if (headers === undefined) return [];
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) throw invalid(`${where}.headers must be an object of name -> string`);
  const entries = Object.entries(headers as Record<string, unknown>);
  if (entries.length > MAX_HEADERS) throw invalid(`${where}.headers holds ${entries.length} headers; at most ${MAX_HEADERS}`);
  const seen = new Set<string>();
  const out: [string, string][] = [];
  for (const [name, value] of entries) {
    const label = `${where}.headers[${JSON.stringify(name.slice(0, 80))}]`;
    if (!TOKEN.test(name) || name.length > MAX_HEADER_NAME_BYTES) {
      throw invalid(`${label}: a header name is 1..${MAX_HEADER_NAME_BYTES} token characters (letters, digits, !#$%&'*+.^_\`|~-)`);
    }
    const lower = name.toLowerCase();
    if (lower.startsWith('nats-')) {
      throw invalid(`${label}: headers starting with Nats- are JetStream's (the adapter sets Nats-Msg-Id itself)`);
    }
    if (seen.has(lower)) throw invalid(`${label}: the header is given twice (names are compared without case)`);
    seen.add(lower);
    if (typeof value !== 'string') throw invalid(`${label} must be a string`);
    if (hasBadValueChar(value)) throw invalid(`${label} holds a line break or another control character`);
    if (value !== value.trim()) throw invalid(`${label} starts or ends with whitespace (NATS would trim it)`);
    out.push([name, value]);
  }
  return out;
}
