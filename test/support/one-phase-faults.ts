/**
 * What a FaultProxy in front of Postgres matches to break a one-phase commit (cutReplies
 * matches the bytes of the request whose answer it drops).
 */

/** The COMMIT of a one-phase branch (simple query protocol: 'Q', length, text). */
export const PLAIN_COMMIT = 'Q\u0000\u0000\u0000\u000bCOMMIT\u0000';

/** The adapter's query that reads a lost COMMIT's outcome (its witness check): cut it and nobody can tell. */
export const OUTCOME_QUERY = 'AS unbroken';
