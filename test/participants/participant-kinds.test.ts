/**
 * The participant-kind registry is the one place that knows the kinds: the JSON schemas, the
 * public contract and the adapters it builds must agree with it, and the registration rules
 * it states hold for every kind.
 */
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { branchBody, registerParticipantBody } from '../../src/api/schemas.js';
import { checkParticipantAddress } from '../../src/coordinator/participant-address.js';
import { PARTICIPANT_KIND_NAMES, checkRegistrationShape, kindSpec, type AdapterSettings, type KindConfig } from '../../src/coordinator/participant-kinds.js';
import { silentLogger } from '../../src/logger.js';

const SETTINGS: AdapterSettings = {
  participantTimeoutMs: 1_000,
  connectTimeoutMs: 1_000,
  statementTimeoutMs: 1_000,
  idleInTransactionTimeoutMs: 1_000,
  pgMaxSessions: 2,
  coordinatorUrl: 'http://127.0.0.1:1',
  uncertainTimeoutMs: 1_000,
};

/** An address of each kind that passes the address checks (nothing listens there). */
const ADDRESSES: Record<string, string> = {
  postgres: 'postgres://u:p@127.0.0.1:1/bank',
  mysql: 'mysql://u:p@127.0.0.1:1/shop',
  redis: 'redis://127.0.0.1:1/0',
  http: 'http://127.0.0.1:1/svc',
  nats: 'nats://127.0.0.1:1',
};

const configOf = (kind: (typeof PARTICIPANT_KIND_NAMES)[number]): KindConfig => ({ name: `p-${kind}`, kind, [kindSpec(kind).addressField]: ADDRESSES[kind] });

describe('the participant-kind registry', () => {
  it('is what the request schemas and openapi.yaml offer', () => {
    const spec = parse(fs.readFileSync(fileURLToPath(new URL('../../openapi.yaml', import.meta.url)), 'utf8'));
    expect(registerParticipantBody.properties.kind.enum).toEqual(PARTICIPANT_KIND_NAMES);
    expect(spec.components.schemas.RegisterParticipantRequest.properties.kind.enum).toEqual([...PARTICIPANT_KIND_NAMES]);
    expect(spec.components.schemas.ParticipantView.properties.kind.enum).toEqual([...PARTICIPANT_KIND_NAMES]);
    // Every work field a kind takes is a field of a branch entry.
    for (const kind of PARTICIPANT_KIND_NAMES) {
      expect(Object.keys(branchBody.properties)).toContain(kindSpec(kind).capabilities.work);
    }
  });

  it.each(PARTICIPANT_KIND_NAMES)('%s: the adapter it builds declares the capabilities of its entry', async (kind) => {
    const spec = kindSpec(kind);
    const adapter = await spec.create(configOf(kind), SETTINGS, silentLogger());
    try {
      expect(adapter.kind).toBe(kind);
      expect({ work: adapter.work, oneBranchPerStore: adapter.oneBranchPerStore, listsPreparedBranches: adapter.listsPreparedBranches }).toEqual({
        work: spec.capabilities.work,
        oneBranchPerStore: spec.capabilities.oneBranchPerStore,
        listsPreparedBranches: spec.capabilities.listsPreparedBranches,
      });
      expect(adapter.canCommit !== undefined).toBe(spec.capabilities.canCommit === 'own');
      expect(adapter.preCommit !== undefined).toBe(spec.capabilities.preCommit);
      expect(adapter.commitOnePhase !== undefined && adapter.onePhaseOutcome !== undefined).toBe(spec.capabilities.onePhase);
      expect(adapter.commitOnePhase === undefined && adapter.onePhaseOutcome === undefined).toBe(!spec.capabilities.onePhase);
    } finally {
      await adapter.close();
    }
  });

  it.each(PARTICIPANT_KIND_NAMES)('%s: takes its own address field and scheme, and no other', (kind) => {
    const spec = kindSpec(kind);
    const config = configOf(kind);
    expect(() => checkRegistrationShape(config)).not.toThrow();
    expect(() => checkParticipantAddress(spec.address, spec.addressField, ADDRESSES[kind] as string)).not.toThrow();
    for (const other of PARTICIPANT_KIND_NAMES) {
      const field = kindSpec(other).addressField;
      if (field === spec.addressField) continue;
      expect(() => checkRegistrationShape({ ...config, [field]: ADDRESSES[other] }), `${kind} with ${field}`).toThrow(
        expect.objectContaining({ code: 'VALIDATION_FAILED', message: `a ${kind} participant takes a ${spec.addressField}, not a ${field}` }),
      );
    }
    for (const other of PARTICIPANT_KIND_NAMES) {
      if (kindSpec(other).address.schemes.some((s) => spec.address.schemes.includes(s))) continue;
      expect(() => checkParticipantAddress(spec.address, spec.addressField, ADDRESSES[other] as string), `${kind} at a ${other} address`).toThrow(
        expect.objectContaining({ code: 'VALIDATION_FAILED' }),
      );
    }
    expect(() => checkRegistrationShape({ name: 'x', kind })).toThrow(expect.objectContaining({ message: `a ${kind} participant needs a ${spec.addressField}` }));
  });

  it('refuses options and credentials on kinds that do not take them, naming the kinds that do', () => {
    expect(() => checkRegistrationShape({ ...configOf('postgres'), options: { allowVolatile: true } })).toThrow(
      expect.objectContaining({ message: 'options.allowVolatile applies to mysql and redis participants only' }),
    );
    expect(() => checkRegistrationShape({ ...configOf('nats'), auth: { type: 'bearer', token: 't' } })).toThrow(
      expect.objectContaining({ message: 'auth applies to http participants only' }),
    );
    expect(() => checkRegistrationShape({ ...configOf('mysql'), options: { allowVolatile: true } })).not.toThrow();
  });

  it.each(PARTICIPANT_KIND_NAMES)('%s: refuses port 0, which its driver would read as the default port', (kind) => {
    const spec = kindSpec(kind);
    const at = (ADDRESSES[kind] as string).replace('127.0.0.1:1', '127.0.0.1:0');
    expect(() => checkParticipantAddress(spec.address, spec.addressField, at), at).toThrow(expect.objectContaining({ message: `${spec.addressField} must not name port 0` }));
  });

  it('refuses mysql and nats addresses that would set client options or name no database', () => {
    const mysql = kindSpec('mysql');
    const nats = kindSpec('nats');
    for (const bad of ['mysql://u:p@h:3306/shop?multipleStatements=true', 'mysql://u:p@h:3306/shop?socketPath=/tmp/x.sock', 'mysql://u:p@h:3306', 'mysql://u:p@h/a/b']) {
      expect(() => checkParticipantAddress(mysql.address, 'connectionString', bad), bad).toThrow(expect.objectContaining({ code: 'VALIDATION_FAILED' }));
    }
    for (const bad of ['nats://h:4222/x', 'nats://h:4222?token=t', 'tls://h:4222']) {
      expect(() => checkParticipantAddress(nats.address, 'url', bad), bad).toThrow(expect.objectContaining({ code: 'VALIDATION_FAILED' }));
    }
  });
});
