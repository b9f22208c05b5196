/**
 * What the mysql participant needs to know about its server: flavour and version (which
 * session settings exist, whether XA PREPARE detaches the transaction from its connection),
 * and the checks registration runs before the server may take part.
 *
 * Refused: MySQL before 5.7.7 and MariaDB before 10.5.2 (a prepared XA transaction is rolled
 * back when its connection ends, so a prepared branch would not survive a lost connection),
 * no InnoDB, a read-only server, and a user that may not run XA RECOVER (MySQL 8 needs
 * XA_RECOVER_ADMIN; MariaDB 10.5+ needs no privilege for it). Refused unless the operator
 * accepts the risk (allowVolatile), then recorded as warnings: innodb_flush_log_at_trx_commit
 * other than 1 (or MariaDB's 3), which can lose a prepared branch in a crash, and a default
 * storage engine other than InnoDB (tables created without ENGINE= would ignore the
 * transaction). Always only a warning: a binary log without sync_binlog = 1, and an account
 * holding FILE or SUPER (SHOW GRANTS, its roles included): the server would read and write files
 * on its host for it — branches refuse LOAD_FILE and INTO OUTFILE / DUMPFILE
 * (mysql-operations.ts), but an account without those privileges is the firmer guarantee.
 */
import { CoordinatorError } from '../errors.js';
import { ER, serverErrno, type Flavour } from './mysql-connections.js';

export interface ServerInfo {
  readonly flavour: Flavour;
  readonly version: readonly [number, number, number];
  /** As the server spells it (VERSION()). */
  readonly versionText: string;
  /**
   * XA PREPARE leaves the connection free (MySQL 8.0.29+ with xa_detach_on_prepare, the
   * default). Otherwise (MariaDB, older MySQL) the connection holds the prepared transaction
   * until XA COMMIT / XA ROLLBACK on it or until it is closed, can run no other statement on
   * a table meanwhile, and another connection's XA COMMIT of it answers XAER_NOTA.
   */
  readonly detachesOnPrepare: boolean;
}

/** Runs one text-protocol query and answers its rows. */
export type RowQuery = (sql: string) => Promise<Record<string, unknown>[]>;

const MINIMUM: Record<Flavour, readonly [number, number, number]> = { mysql: [5, 7, 7], mariadb: [10, 5, 2] };

function atLeast(v: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < 3; i++) {
    if ((v[i] ?? 0) !== (min[i] ?? 0)) return (v[i] ?? 0) > (min[i] ?? 0);
  }
  return true;
}

export function parseVersion(versionText: string, comment = ''): { flavour: Flavour; version: [number, number, number] } {
  const flavour: Flavour = /mariadb/i.test(`${versionText} ${comment}`) ? 'mariadb' : 'mysql';
  // Old MariaDB releases prefix the version they claim for MySQL clients: 5.5.5-10.x.y-MariaDB.
  const text = versionText.replace(/^5\.5\.5-(?=\d+\.\d+\.\d+-MariaDB)/i, '');
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(text);
  return { flavour, version: m === null ? [0, 0, 0] : [Number(m[1]), Number(m[2]), Number(m[3])] };
}

export async function detectServer(query: RowQuery): Promise<ServerInfo> {
  const row = (await query('SELECT VERSION() AS version, @@version_comment AS comment'))[0] ?? {};
  const versionText = String(row.version ?? '');
  const { flavour, version } = parseVersion(versionText, String(row.comment ?? ''));
  let detachesOnPrepare = false;
  if (flavour === 'mysql' && atLeast(version, [8, 0, 29])) {
    try {
      const v = (await query('SELECT @@xa_detach_on_prepare AS v'))[0]?.v;
      detachesOnPrepare = String(v) === '1' || String(v).toUpperCase() === 'ON';
    } catch (err) {
      if (serverErrno(err) !== ER.UNKNOWN_SYSTEM_VARIABLE) throw err;
    }
  }
  return { flavour, version, versionText, detachesOnPrepare };
}

export interface Findings {
  /** Risks that allowVolatile lets through (as warnings). */
  readonly volatile: string[];
  /** Shown to operators in any case. */
  readonly warnings: string[];
}

function misconfigured(message: string, details: Record<string, unknown>): CoordinatorError {
  return new CoordinatorError('PARTICIPANT_MISCONFIGURED', message, { details });
}

/** Registration checks; throws PARTICIPANT_MISCONFIGURED for what can never work. */
export async function inspectServer(name: string, user: string, server: ServerInfo, query: RowQuery): Promise<Findings> {
  const who = `mysql participant ${name} (${server.flavour} ${server.versionText})`;
  const minimum = MINIMUM[server.flavour];
  if (!atLeast(server.version, minimum)) {
    throw misconfigured(
      `${who} is too old: before ${server.flavour === 'mysql' ? 'MySQL' : 'MariaDB'} ${minimum.join('.')} a prepared XA transaction ` +
        'is rolled back when its connection ends, so a prepared branch would not survive a lost connection or a restart. Upgrade the server.',
      { participant: name, version: server.versionText, minimum: minimum.join('.') },
    );
  }
  const engine = (await query("SELECT SUPPORT AS support FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB'"))[0]?.support;
  if (engine === undefined || !['YES', 'DEFAULT'].includes(String(engine).toUpperCase())) {
    throw misconfigured(`${who} has no InnoDB storage engine: XA transactions need it.`, { participant: name, innodb: engine ?? 'missing' });
  }
  const settings =
    (await query(
      'SELECT @@default_storage_engine AS engine, @@innodb_flush_log_at_trx_commit AS flush, @@log_bin AS log_bin, ' +
        '@@sync_binlog AS sync_binlog, @@read_only AS read_only, @@secure_file_priv AS secure_file_priv',
    ))[0] ?? {};
  if (String(settings.read_only) === '1') {
    throw misconfigured(`${who} is read-only (read_only = ON): it cannot take part in transactions. Register the primary.`, {
      participant: name,
      setting: 'read_only',
    });
  }
  try {
    await query('XA RECOVER');
  } catch (err) {
    const errno = serverErrno(err);
    if (errno === ER.SPECIFIC_ACCESS_DENIED || errno === ER.DBACCESS_DENIED || errno === 1142) {
      throw misconfigured(
        `${who}: user ${user} may not run XA RECOVER, which recovery needs to find prepared branches after a crash. ` +
          `Grant it: GRANT XA_RECOVER_ADMIN ON *.* TO '${user}'@'…' (MySQL 8).`,
        { participant: name, privilege: 'XA_RECOVER_ADMIN' },
      );
    }
    throw err;
  }
  const volatile: string[] = [];
  const warnings: string[] = [];
  const flush = String(settings.flush);
  if (!(flush === '1' || (flush === '3' && server.flavour === 'mariadb'))) {
    volatile.push(
      `${who} runs with innodb_flush_log_at_trx_commit = ${flush}: a crash can lose prepared (and committed) branches, breaking atomicity. ` +
        'Set innodb_flush_log_at_trx_commit = 1.',
    );
  }
  const defaultEngine = String(settings.engine ?? '');
  if (defaultEngine.toUpperCase() !== 'INNODB') {
    volatile.push(
      `${who} creates tables with ${defaultEngine} by default: tables without ENGINE=InnoDB ignore transactions, so their changes are not atomic. ` +
        'Set default_storage_engine = InnoDB.',
    );
  }
  if (String(settings.log_bin) === '1' && String(settings.sync_binlog) !== '1') {
    warnings.push(
      `${who} writes a binary log with sync_binlog = ${String(settings.sync_binlog)}: after an operating-system crash replicas may miss ` +
        'prepared or committed branches. Set sync_binlog = 1.',
    );
  }
  let privileges: FilePrivileges | undefined;
  try {
    privileges = await filePrivileges(server.flavour, query);
  } catch {
    privileges = undefined;
  }
  if (privileges === undefined) {
    warnings.push(`${who}: the privileges of user ${user} could not be read (SHOW GRANTS) to check that it holds neither FILE nor SUPER.`);
  } else {
    const { held, unread } = privileges;
    if (held.length > 0) {
      const all = held.includes('ALL PRIVILEGES') ? ' (which include FILE and SUPER)' : '';
      warnings.push(
        `${who}: user ${user} holds ${held.join(', ')}${all}: with it the server may read and write files on its host for this account ` +
          `(LOAD_FILE, SELECT … INTO OUTFILE / DUMPFILE, LOAD DATA${whereFiles(server.flavour, settings.secure_file_priv)}), outside any transaction. ` +
          'Branches refuse those statements, but an account without these privileges is the firmer guarantee: register one that holds only the row privileges its work needs.',
      );
    } else if (unread.length > 0) {
      warnings.push(
        `${who}: user ${user} may take role ${unread.join(', ')}, whose privileges could not be read (not active at login): ` +
          'check that it holds neither FILE nor SUPER, with which the server reads and writes files on its host.',
      );
    }
  }
  return { volatile, warnings };
}

/** Where secure_file_priv lets the server read and write files, for the warning. */
function whereFiles(flavour: Flavour, secureFilePriv: unknown): string {
  if (typeof secureFilePriv === 'string' && secureFilePriv !== '') return `; secure_file_priv limits it to ${secureFilePriv}`;
  // MySQL: NULL turns file import and export off; '' (and MariaDB's unset) leaves them anywhere the server's process may go.
  if (flavour === 'mysql' && (secureFilePriv === null || secureFilePriv === undefined)) return '; secure_file_priv = NULL turns it off for now';
  return '; secure_file_priv does not limit where';
}

/** Roles followed at most when reading an account's privileges. */
const MAX_ROLES = 32;

/** A quoted account or role name as SHOW GRANTS prints it (`r`, `u`@`host`): only whole quoted identifiers. */
const QUOTED_NAME = /`(?:[^`]|``)+`(?:@`(?:[^`]|``)*`)?/g;

interface FilePrivileges {
  /** FILE, SUPER or ALL PRIVILEGES, held directly or through a role whose grants were read. */
  readonly held: string[];
  /** Roles granted to the account whose grants could not be read. */
  readonly unread: string[];
}

/**
 * The file-related global privileges the account holds, directly or through its roles. SHOW
 * GRANTS lists the grants of the roles active at login (MariaDB) along with the account's; a
 * granted role whose grants are not among them is read with SHOW GRANTS FOR the role (which
 * needs read access to the mysql schema) or, on MySQL, SHOW GRANTS … USING the role.
 */
async function filePrivileges(flavour: Flavour, query: RowQuery): Promise<FilePrivileges> {
  const held = new Set<string>();
  const roles: string[] = [];
  const grantees = new Set<string>();
  const read = async (sql: string): Promise<void> => {
    for (const row of await query(sql)) {
      const line = String(Object.values(row)[0] ?? '');
      // Whose grants the line shows (the account's, or an active role's).
      const grantee = /\sTO\s+(`(?:[^`]|``)+`(?:@`(?:[^`]|``)*`)?)/i.exec(line)?.[1];
      if (grantee !== undefined) grantees.add(grantee);
      const global = /^GRANT\s+(.+?)\s+ON\s+\*\.\*\s+TO\s/is.exec(line);
      if (global !== null) {
        for (const privilege of (global[1] ?? '').split(',').map((p) => p.trim().toUpperCase().replace(/\s+/g, ' '))) {
          if (privilege === 'FILE' || privilege === 'SUPER') held.add(privilege);
          else if (privilege === 'ALL' || privilege === 'ALL PRIVILEGES') held.add('ALL PRIVILEGES');
        }
        continue;
      }
      const granted = /^GRANT\s+(`.*?`)\s+TO\s/is.exec(line);
      if (granted === null || (granted[1] ?? '').replace(QUOTED_NAME, '').replace(/[\s,]/g, '') !== '') continue;
      for (const role of (granted[1] ?? '').match(QUOTED_NAME) ?? []) if (!roles.includes(role)) roles.push(role);
    }
  };
  await read('SHOW GRANTS');
  const unread: string[] = [];
  // Roles granted to roles are followed too, up to MAX_ROLES. The names came from the server as
  // whole quoted identifiers: nothing else goes into the text.
  for (let i = 0; i < roles.length && i < MAX_ROLES; i++) {
    const role = roles[i] ?? '';
    if (grantees.has(role) || grantees.has(`${role}@\`%\``)) continue;
    const ok = await read(`SHOW GRANTS FOR ${role}`).then(
      () => true,
      async () => flavour === 'mysql' && (await read(`SHOW GRANTS FOR CURRENT_USER() USING ${role}`).then(() => true, () => false)),
    );
    if (!ok) unread.push(role);
  }
  return { held: [...held], unread };
}
