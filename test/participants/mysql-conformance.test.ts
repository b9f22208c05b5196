/**
 * The adapter conformance suite (test/support/adapter-conformance.ts) for the mysql kind, on a
 * MariaDB server of its own (durable: innodb_flush_log_at_trx_commit = 1), which the suite
 * SIGKILLs and restarts while branches are prepared, and black-holes behind a fault proxy.
 */
import { silentLogger } from '../../src/logger.js';
import { MySqlParticipant } from '../../src/participants/mysql-participant.js';
import { describeConformance, rehost, type ConformanceKind } from '../support/adapter-conformance.js';
import { MariaDbServer } from '../support/mariadb-server.js';

async function mysqlKind(): Promise<ConformanceKind> {
  const server = await MariaDbServer.start({ name: 'conformance' });
  const url = await server.createDatabase('conformance');
  await server.query(
    'CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, balance BIGINT NOT NULL, CHECK (balance >= 0)) ENGINE=InnoDB',
    [],
    'conformance',
  );
  await server.query("INSERT INTO accounts (id, balance) VALUES ('acc0', 1000), ('acc1', 1000)", [], 'conformance');
  const build = (connectionString: string, timeoutMs: number): MySqlParticipant =>
    new MySqlParticipant({
      name: 'my',
      connectionString,
      maxSessions: 4,
      connectTimeoutMs: timeoutMs,
      statementTimeoutMs: timeoutMs,
      idleInTransactionTimeoutMs: 60_000,
      logger: silentLogger(),
    });
  const adapter = build(url, 10_000);
  return {
    name: 'mysql',
    adapter: () => adapter,
    address: { host: server.host, port: server.port },
    adapterAt: (host, port) => build(rehost(url, host, port), 1_000),
    work: (delta, slot = 0) => [{ sql: 'UPDATE accounts SET balance = balance + ? WHERE id = ?', params: [delta, `acc${slot}`] }],
    value: async (slot = 0) =>
      Number((await server.query<{ balance: string }[]>('SELECT balance FROM accounts WHERE id = ?', [`acc${slot}`], 'conformance'))[0]?.balance),
    restart: async () => {
      await server.kill();
      await server.restart();
    },
    close: async () => {
      await adapter.close();
      await server.destroy();
    },
  };
}

describeConformance('mysql', mysqlKind);
